"""The status view shared by ``mmops status`` and ``GET /status``: per session, the last
settlement (state, age, counts, stop-loss level), coverage per pair and migration state. It
carries no URL, key or secret."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from mmops.adapters.redis.ops import OpsStore
from mmops.bootstrap import Runtime, exchange_markets
from mmops.services.coverage import CoverageService


async def collect_status(rt: Runtime) -> list[dict[str, Any]]:
    ops = OpsStore(rt.redis)
    s = rt.settings
    now = rt.clock.now()
    sessions = await rt.registry.recent_sessions(
        s.settlement_hours_back, s.settlement_session_limit, now
    )
    coverage = CoverageService(rt.positions)
    markets = await exchange_markets(rt)
    rows = []
    for session in sessions:
        settlement = await ops.settlement_status(session.id)
        last_run = await ops.settlement_last_run(session.id)
        pairs = [p for p in session.pairs if p in markets]
        covered = [await coverage.pair(session.id, p, markets[p], now) for p in pairs]
        rows.append(
            {
                "session": session.id,
                "status": session.status.value,
                "mode": session.mode,
                "exchange": session.exchange,
                "pairs": list(session.pairs),
                "started_at": session.started_at.isoformat(),
                "ended_at": session.ended_at.isoformat() if session.ended_at else None,
                "last_settlement": {
                    "state": settlement.get("state"),
                    "finished_at": last_run,
                    "age_s": _age(last_run, now),
                    "placed": _count(settlement.get("placed")),
                    "skipped": _count(settlement.get("skipped")),
                    "failed": _count(settlement.get("failed")),
                    "stoploss_level": settlement.get("stoploss_level"),
                },
                "coverage": [c.to_dict() for c in covered],
                "migration_completed_at": await ops.migration_completed(session.id),
            }
        )
    return rows


def _count(stored: str | None) -> int | None:
    """Counts are numbers in JSON; quantities and prices stay decimal strings."""
    return None if stored is None else int(stored)


def _age(at: str | None, now: datetime) -> float | None:
    return None if at is None else (now - datetime.fromisoformat(at)).total_seconds()
