"""Price history: each settlement run records the tickers it fetched for a session's pairs, so
markouts and the tier backtest work for live sessions as well as paper ones.

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
    recorder: PriceRecorder | None,
    session: Session,
    tickers: Mapping[str, Ticker],
    *,
    whole: bool = True,
) -> bool:
    """Record the session's tickers; True if recorded. Only for a ``whole`` run (settlement's
    full run of the whole session, not a part narrowed to some pairs), so a session gets one
    store call per run. Never raises (but cancellation): a failure is logged and the caller's
    run goes on."""
    if recorder is None or not whole:
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
