"""Figures of a tier backtest: per table, a ranking, how sure the ranking is, and how closely a
replay reproduces what a session really did.

* **fill rate**: positions whose placeable quantity was all sold / positions that had a
  placeable quantity (dust-only positions are counted apart);
* **time to fill**: from a position's first buy fill to each take-profit fill (p50, p90);
* **realized markup**: realized P&L / cost of what was sold (the markup captured after fees);
* **realized P&L**: Σ (sell price * quantity - sell fee - basis * quantity);
* **inventory-hours**: Σ basis * quantity held * hours held (quote-currency hours), to the end
  of the replay; a table that sells sooner ties up less.

Tables are ranked by realized P&L per inventory-hour. Confidence is a paired bootstrap over
positions (each resample draws positions with replacement and computes every table's rate on
the same draw): the 95% interval of each table's difference to the baseline, and a verdict
only when that interval excludes zero. It says how much the ranking depends on which positions
happened to be in the session; it cannot say whether the session's prices were typical.
Pairs in different quote currencies are added at face value (the same positions enter every
table, so the comparison is like for like). Money is ``Decimal``; the bootstrap's coin is a
seeded ``random.Random``, so a report is reproducible.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from mmops.domain.backtest import PositionOutcome, RealSell, Replay
from mmops.domain.models import ZERO, Market

BOOTSTRAP_RESAMPLES = 1000


@dataclass(frozen=True, slots=True)
class TableFigures:
    label: str
    positions: int  # positions with a placeable quantity
    dust_positions: int  # positions that were never placeable
    closed_positions: int
    open_positions: int  # a take-profit still resting, or quantity still waiting, at the end
    tp_fills: int
    fill_rate: Decimal | None
    time_to_fill_p50_s: int | None
    time_to_fill_p90_s: int | None
    realized_markup: Decimal | None
    realized_pnl: Decimal
    inventory_hours: Decimal
    pnl_per_inventory_hour: Decimal | None


def summarize(label: str, replay: Replay) -> TableFigures:
    """The figures of one table's replay (see the module docstring for each definition)."""
    placeable = [p for p in replay.positions if p.sold > 0 or p.open_quantity > 0]
    waits = sorted(
        int((f.at - p.opened_at).total_seconds()) for p in replay.positions for f in p.fills
    )
    pnl = sum((p.realized_pnl for p in replay.positions), ZERO)
    cost_sold = sum((p.cost_of_sold for p in replay.positions), ZERO)
    inventory = sum((p.inventory_hours for p in replay.positions), ZERO)
    closed = sum(1 for p in placeable if p.closed)
    return TableFigures(
        label=label,
        positions=len(placeable),
        dust_positions=len(replay.positions) - len(placeable),
        closed_positions=closed,
        open_positions=sum(1 for p in placeable if p.open_quantity > 0),
        tp_fills=len(waits),
        fill_rate=Decimal(closed) / len(placeable) if placeable else None,
        time_to_fill_p50_s=percentile(waits, 50),
        time_to_fill_p90_s=percentile(waits, 90),
        realized_markup=pnl / cost_sold if cost_sold else None,
        realized_pnl=pnl,
        inventory_hours=inventory,
        pnl_per_inventory_hour=pnl / inventory if inventory else None,
    )


def percentile(values: Sequence[int], q: int) -> int | None:
    """The nearest-rank ``q``-th percentile of sorted ``values`` (None when there are none)."""
    if not values:
        return None
    rank = max(1, -(-q * len(values) // 100))  # ceil(q/100 · n), at least the first
    return values[rank - 1]


def rate(positions: Sequence[PositionOutcome]) -> Decimal | None:
    """Realized P&L per inventory-hour of ``positions`` (None when nothing was held)."""
    inventory = sum((p.inventory_hours for p in positions), ZERO)
    if not inventory:
        return None
    return sum((p.realized_pnl for p in positions), ZERO) / inventory


class Verdict(StrEnum):
    BETTER = "better"  # the 95% interval of the difference lies above zero
    WORSE = "worse"
    UNCLEAR = "not distinguishable"  # the interval holds zero, or too few positions
    BASELINE = "baseline"


@dataclass(frozen=True, slots=True)
class Confidence:
    """A table's difference to the baseline in P&L per inventory-hour, with its bootstrap
    95% interval over ``positions`` positions and the share of resamples where it was ahead."""

    label: str
    positions: int
    difference: Decimal | None
    low: Decimal | None
    high: Decimal | None
    ahead_share: Decimal | None
    verdict: Verdict


MIN_POSITIONS = 10  # below this a bootstrap interval means little: no verdict


def confidence(
    baseline: Replay,
    others: Mapping[str, Replay],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> list[Confidence]:
    """Each table of ``others`` against ``baseline`` by a paired bootstrap over positions.

    Raises ValueError if a replay holds other positions than the baseline's (replays of one
    session always hold the same ones).
    """
    ids = [p.position_id for p in baseline.positions]
    columns = {label: _aligned(ids, r) for label, r in others.items()}
    base = list(baseline.positions)
    rng = random.Random(seed)  # noqa: S311 - a reproducible resampling coin, not crypto
    draws = [[rng.randrange(len(ids)) for _ in ids] for _ in range(resamples)] if ids else []
    base_rates = [rate([base[i] for i in draw]) for draw in draws]
    result = []
    for label, column in columns.items():
        diffs = []
        for draw, b in zip(draws, base_rates, strict=True):
            r = rate([column[i] for i in draw])
            if r is not None and b is not None:
                diffs.append(r - b)
        result.append(_confidence(label, len(ids), rate(column), rate(base), sorted(diffs)))
    return result


def _aligned(ids: Sequence[str], other: Replay) -> list[PositionOutcome]:
    by_id = {p.position_id: p for p in other.positions}
    if set(by_id) != set(ids):
        raise ValueError("replays of different positions cannot be compared")
    return [by_id[i] for i in ids]


def _confidence(
    label: str, n: int, mine: Decimal | None, base: Decimal | None, diffs: list[Decimal]
) -> Confidence:
    difference = None if mine is None or base is None else mine - base
    if not diffs:
        return Confidence(label, n, difference, None, None, None, Verdict.UNCLEAR)
    low = diffs[int(0.025 * (len(diffs) - 1))]
    high = diffs[int(0.975 * (len(diffs) - 1) + 0.5)]
    ahead = Decimal(sum(1 for d in diffs if d > 0)) / len(diffs)
    verdict = Verdict.UNCLEAR
    if n >= MIN_POSITIONS and low > 0:
        verdict = Verdict.BETTER
    elif n >= MIN_POSITIONS and high < 0:
        verdict = Verdict.WORSE
    return Confidence(label, n, difference, low, high, ahead, verdict)


def ranked(figures: Sequence[TableFigures]) -> list[TableFigures]:
    """Best first by realized P&L per inventory-hour; tables that held nothing come last."""
    return sorted(
        figures,
        key=lambda f: (f.pnl_per_inventory_hour is None, -(f.pnl_per_inventory_hour or ZERO)),
    )


# -- reproduction: the replay against what really happened ------------------------------


@dataclass(frozen=True, slots=True)
class Reproduction:
    """How closely a replay reproduced a session's real take-profit fills, per position.

    A position is **matched** when both sold the same quantity (within one lot) at the same
    average price (within one tick). ``delays_s``: replay fill time - real fill time (the last
    fill of each position sold in both), seconds.
    """

    real_sold: int  # positions with a real take-profit fill (unknown positions included)
    replay_sold: int
    sold_in_both: int
    matched: int
    only_real: int
    only_replay: int
    real_pnl: Decimal
    replay_pnl: Decimal
    delays_s: tuple[int, ...]

    @property
    def rate(self) -> Decimal | None:
        """Matched positions / positions really sold."""
        return Decimal(self.matched) / self.real_sold if self.real_sold else None


def reproduction(
    replayed: Replay, real: Sequence[RealSell], markets: Mapping[str, Market]
) -> Reproduction:
    """Compare ``replayed`` with the ``real`` take-profit fills of the same session."""
    outcomes = {p.position_id: p for p in replayed.positions}
    sells: dict[str, list[RealSell]] = {}
    for s in real:
        sells.setdefault(s.position_id, []).append(s)
    replay_sold = {pid for pid, p in outcomes.items() if p.fills}
    both = replay_sold & set(sells)
    matched = sum(
        1 for pid in both if _same(outcomes[pid], sells[pid], markets[outcomes[pid].symbol])
    )
    real_pnl = replay_pnl = ZERO  # both at each position's final basis, like for like
    for pid, p in outcomes.items():
        basis = p.cost / p.bought if p.bought else ZERO
        replay_pnl += sum(
            (f.price * f.quantity - f.fee - basis * f.quantity for f in p.fills), ZERO
        )
        for s in sells.get(pid, ()):
            real_pnl += s.price * s.quantity - s.fee - basis * s.quantity
    delays = []
    for pid in sorted(both):
        last_replay = outcomes[pid].last_fill_at
        assert last_replay is not None
        delays.append(int((last_replay - max(s.at for s in sells[pid])).total_seconds()))
    return Reproduction(
        real_sold=len(sells),
        replay_sold=len(replay_sold),
        sold_in_both=len(both),
        matched=matched,
        only_real=len(set(sells) - replay_sold),
        only_replay=len(replay_sold - set(sells)),
        real_pnl=real_pnl,
        replay_pnl=replay_pnl,
        delays_s=tuple(delays),
    )


def _same(replayed: PositionOutcome, sells: Sequence[RealSell], market: Market) -> bool:
    """Same quantity sold (within a lot) at the same average price (within a tick)."""
    real_qty = sum((s.quantity for s in sells), ZERO)
    if abs(real_qty - replayed.sold) >= market.lot or not real_qty:
        return False
    real_avg = sum((s.price * s.quantity for s in sells), ZERO) / real_qty
    replay_avg = sum((f.price * f.quantity for f in replayed.fills), ZERO) / replayed.sold
    return abs(real_avg - replay_avg) < market.tick
