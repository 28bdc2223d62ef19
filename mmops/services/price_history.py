"""Price history: each settlement run records the tickers it fetched for the pairs it settles,
so markouts and the tier backtest work for live sessions as well as paper ones.

Recording is a side line of settlement: it never fails a run. Any error is logged
(``prices.record_failed``) and the run goes on.
"""

from __future__ import annotations

from collections.abc import Mapping

from mmops import logs
from mmops.domain.models import Session, Ticker
from mmops.errors import MmopsError
from mmops.ports import PriceRecorder

log = logs.get_logger("mmops.prices")


def session_tickers(session: Session, tickers: Mapping[str, Ticker]) -> list[Ticker]:
    """The fetched tickers of the session's pairs, in the session's pair order."""
    return [tickers[pair] for pair in session.pairs if pair in tickers]


async def record_prices(
    recorder: PriceRecorder | None, session: Session, tickers: Mapping[str, Ticker]
) -> bool:
    """Record the tickers of the session's pairs (a part's session holds only the pairs it
    settles: a quick run's, a group's), one store call; True if recorded. Every run records,
    quick ones too: the tier backtest replays a pair's settlement at the times its prices were
    recorded, and a quick run covers and reprices like a full one. Never raises (but
    cancellation): a failure is logged and the caller's run goes on."""
    if recorder is None:
        return False
    found = session_tickers(session, tickers)
    if not found:
        return False
    try:
        await recorder.record(session.id, found)
    except MmopsError as e:  # a side line: a store error here never fails the run
        log.warning("prices.record_failed", session=session.id, error=f"{type(e).__name__}: {e}")
        return False
    return True
