"""The tier backtest as a use case: one session's history replayed against the table it ran
with (the baseline) and against other tables; figures per table, ranked by realized P&L per
inventory-hour, the bootstrap's confidence against the baseline, and how closely the baseline
replay reproduces the session's real take-profit fills. Pure: the caller reads the history
(``mmops.adapters.postgres.backtest_reads``) and the markets, and prints the report.

The baseline is the tier policy settlement is configured with (``MMOPS_TP_TIERS`` and
``MMOPS_TP_TIERS_BY_PAIR``): a session does not store its own table. The tiers its
take-profits were recorded at are checked against it, and each disagreement is reported, so a
session run under another configuration is not silently compared with the wrong baseline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import Any

from mmops.domain.backtest import (
    FillModel,
    Replay,
    ReplayData,
    SessionHistory,
    replay,
    whole_fills,
)
from mmops.domain.backtest_stats import (
    BOOTSTRAP_RESAMPLES,
    Confidence,
    Reproduction,
    TableFigures,
    confidence,
    ranked,
    reproduction,
    summarize,
)
from mmops.domain.models import Market
from mmops.domain.tiers import TierPolicy
from mmops.jsonable import jsonable

BASELINE = "session"


@dataclass(frozen=True, slots=True)
class Candidate:
    label: str
    tiers: TierPolicy


@dataclass(frozen=True, slots=True)
class BacktestReport:
    session_id: str
    price_records: int
    path_points: int  # the fill path replayed on (0: the settlement-time prices themselves)
    buys: int
    tables: list[TableFigures]  # best first
    confidence: list[Confidence]  # each other table against the baseline
    reproduction: Reproduction  # the baseline's replay against the real take-profit fills
    tiers: dict[str, dict[str, dict[int, Decimal]]]  # label → pair ('*' default) → table
    tier_mismatches: list[str] = field(default_factory=list)
    bad_rows: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = jsonable(
            {
                "session": self.session_id,
                "baseline": BASELINE,
                "price_records": self.price_records,
                "fill_path_points": self.path_points,
                "buy_fills": self.buys,
                "ranking": [t.label for t in self.tables],
                "tables": [_fields(t) for t in self.tables],
                "confidence": [_fields(c) for c in self.confidence],
                "reproduction": {**_fields(self.reproduction), "rate": self.reproduction.rate},
                "tiers": self.tiers,
                "tier_mismatches": self.tier_mismatches,
                "bad_rows": self.bad_rows,
                "warnings": self.warnings,
            }
        )
        return result


def run_backtest(
    history: SessionHistory,
    markets: Mapping[str, Market],
    baseline: TierPolicy,
    candidates: Sequence[Candidate],
    *,
    fills: FillModel = whole_fills,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> BacktestReport:
    """Replay ``history`` against ``baseline`` and each candidate, each crossing filling what
    ``fills`` says. Fills are matched on the fill path the session recorded (``history.path``),
    else on the settlement-time tickers.

    Raises ValueError if a candidate is labelled like the baseline or two share a label, or if
    the history names a pair ``markets`` does not hold.
    """
    labels = [BASELINE, *(c.label for c in candidates)]
    if len(set(labels)) != len(labels):
        raise ValueError(f"table labels must be distinct (and not {BASELINE!r}): {labels}")
    fill_path = history.path or None
    data = ReplayData(
        history.session.id,
        markets,
        history.buys,
        history.prices,
        path=fill_path,
        end=history.session.ended_at,
    )
    base = replay(data, baseline, fills)
    others: dict[str, Replay] = {c.label: replay(data, c.tiers, fills) for c in candidates}
    figures = [summarize(BASELINE, base), *(summarize(k, r) for k, r in others.items())]
    return BacktestReport(
        session_id=history.session.id,
        price_records=len(history.prices),
        path_points=len(fill_path or ()),
        buys=len(history.buys),
        tables=ranked(figures),
        confidence=confidence(base, others, resamples=resamples),
        reproduction=reproduction(base, history.sells, markets),
        tiers={BASELINE: _tables(baseline), **{c.label: _tables(c.tiers) for c in candidates}},
        tier_mismatches=tier_mismatches(history, baseline),
        bad_rows=list(history.bad),
        warnings=_warnings(history),
    )


def tier_mismatches(history: SessionHistory, baseline: TierPolicy) -> list[str]:
    """Recorded (pair, tier, markup) of the session's take-profits that ``baseline`` would not
    have priced: the session ran with another table than the configured one."""
    found = []
    for pair, tier, markup in history.tiers_used:
        table = baseline.for_pair(pair)
        if tier < 0 or table.markup_at(tier) != (tier, markup):
            found.append(f"{pair}: take-profits priced at tier {tier} min, markup {markup}")
    return found


def _warnings(history: SessionHistory) -> list[str]:
    warnings = []
    if not history.prices:
        warnings.append("no prices recorded for this session: nothing can fill in a replay")
    if history.session.ended_at is None:
        warnings.append("the session has not ended: positions are counted to the last price")
    return warnings


def _tables(policy: TierPolicy) -> dict[str, dict[int, Decimal]]:
    return {"*": policy.default.as_dict(), **{p: t.as_dict() for p, t in policy.per_pair.items()}}


def _fields(record: Any) -> dict[str, Any]:
    return {f.name: getattr(record, f.name) for f in fields(record)}
