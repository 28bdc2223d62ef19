"""The status view shared by ``mmops status`` and ``GET /status``: per session, the last
settlement (state, age, counts, stop-loss level), coverage per pair, migration state and
``stale`` (a running session with no fill for MMOPS_SESSION_STALE_AFTER seconds). It carries
no URL, key or secret."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from mmops.bootstrap import Runtime, build_reconciler, open_exchange
from mmops.domain.models import Market, Session
from mmops.domain.records import SettlementStatus
from mmops.errors import BadRecordError
from mmops.services.coverage import CoverageService


async def collect_status(rt: Runtime) -> list[dict[str, Any]]:
    s = rt.settings
    now = rt.clock.now()
    sessions = await rt.registry.recent_sessions(
        s.settlement_hours_back, s.settlement_session_limit, now
    )
    # Coverage measured against the exchange (a read-only reconciliation, nothing changed).
    async with open_exchange(rt, dry_run=True) as exchange:
        markets = await exchange.markets()
        coverage = CoverageService(rt.positions, build_reconciler(rt, exchange, dry_run=True))
        stale = await rt.leases.stale([session.id for session in sessions])
        return [
            {**await _row(rt, session, coverage, markets, now), "stale": session.id in stale}
            for session in sessions
        ]


async def _row(
    rt: Runtime,
    session: Session,
    coverage: CoverageService,
    markets: Mapping[str, Market],
    now: datetime,
) -> dict[str, Any]:
    ops = rt.ops
    try:
        settlement, unreadable = await ops.settlement_status(session.id), None
    except BadRecordError as e:  # one corrupt hash never hides the other sessions
        settlement, unreadable = None, str(e)
    last_run = await ops.settlement_last_run(session.id)
    pairs = [p for p in session.pairs if p in markets]
    covered = await coverage.session(session, markets, now, pairs)
    return {
        "session": session.id,
        "status": session.status.value,
        "mode": session.mode,
        "exchange": session.exchange,
        "pairs": list(session.pairs),
        "started_at": session.started_at.isoformat(),
        "ended_at": session.ended_at.isoformat() if session.ended_at else None,
        "last_settlement": {
            **_last_settlement(settlement, last_run, now),
            "unreadable": unreadable,
        },
        "coverage": [c.to_dict() for c in covered],
        "migration_completed_at": await ops.migration_completed(session.id),
    }


def _last_settlement(
    status: SettlementStatus | None, last_run: str | None, now: datetime
) -> dict[str, Any]:
    """Counts are numbers in JSON; everything is None before the session's first run."""
    level = status.stoploss_level if status is not None else None
    return {
        "state": status.state.value if status is not None else None,
        "finished_at": last_run,
        "age_s": _age(last_run, now),
        "placed": status.placed if status is not None else None,
        "skipped": status.skipped if status is not None else None,
        "failed": status.failed if status is not None else None,
        "stoploss_level": level.value if level is not None else None,
    }


def _age(at: str | None, now: datetime) -> float | None:
    return None if at is None else (now - datetime.fromisoformat(at)).total_seconds()
