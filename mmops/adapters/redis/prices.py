"""The price history of a session, two series (docs/REDIS_SCHEMA.md):

* ``prices:{S}``: the best bid and ask of its pairs as each settlement run fetched them;
* ``path:{S}``: the fill path, the venue's best bid and ask at each of its match steps, which
  the paper loop records (a venue fills on it, so the tier backtest replays on it).

Migration copies them to PostgreSQL ``prices`` and ``price_path``
(``mmops.adapters.postgres.analytics_sync``); markouts and the tier backtest read them there.

Each is a STREAM, one entry per run (or step): one field per pair, its value
``"<bid> <ask> <time ISO 8601>"`` (the ticker's own time). An append is XADDs with an
approximate MAXLEN (bounded growth: the oldest entries are trimmed first), queued in one MULTI
with the key's registration in ``keys:{S}``: one round trip, on the session's slot
(cluster-safe).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, cast

from mmops.adapters.redis import codec, keys
from mmops.adapters.redis.client import Redis, redis_errors
from mmops.domain.models import Ticker, check_symbol
from mmops.domain.records import PriceSeries, ReadResult
from mmops.errors import BadRecordError

# Entries kept per session (the oldest trimmed first): every run is an entry, quick runs and
# groups included, so the span is shorter on a busy session than 50,000 x 3 minutes; migration
# copies them long before on its hourly schedule.
DEFAULT_MAX_RUNS = 50_000
DEFAULT_MAX_STEPS = 200_000  # path entries: 23 days of the paper loop's 10-second steps
_KEYS = {PriceSeries.RUNS: keys.prices, PriceSeries.PATH: keys.price_path}
READ_CHUNK = 1000  # stream entries per XRANGE


def ticker_value(t: Ticker) -> str:
    return f"{t.bid} {t.ask} {codec.iso(t.timestamp)}"


def ticker_from_value(symbol: str, value: Any) -> Ticker:
    """Parse one pair's value; raises ValueError/TypeError (quarantined by the caller)."""
    if not isinstance(value, str):
        raise TypeError(f"expected '<bid> <ask> <time>', got {type(value).__name__}")
    bid, ask, at = value.split(" ")
    return Ticker(check_symbol(symbol), codec.dec(bid), codec.dec(ask), codec.aware(at))


class PriceStore:
    """Append and read ``prices:{S}`` and ``path:{S}``."""

    def __init__(
        self, redis: Redis, max_runs: int = DEFAULT_MAX_RUNS, max_steps: int = DEFAULT_MAX_STEPS
    ) -> None:
        if max_runs < 1 or max_steps < 1:
            raise ValueError(f"stream caps must be at least 1, got {max_runs} and {max_steps}")
        self._r = redis
        self._caps = {PriceSeries.RUNS: max_runs, PriceSeries.PATH: max_steps}

    async def record(self, session_id: str, tickers: Sequence[Ticker]) -> None:
        """Append one run's tickers of the session's pairs (nothing for none): one round trip."""
        await self._append(session_id, PriceSeries.RUNS, [tickers])

    async def record_path(self, session_id: str, steps: Sequence[Sequence[Ticker]]) -> None:
        """Append the venue's quotes of the session's pairs, one entry per match step, oldest
        first (empty steps skipped): one round trip."""
        await self._append(session_id, PriceSeries.PATH, steps)

    @redis_errors
    async def _append(
        self, session_id: str, series: PriceSeries, entries: Sequence[Sequence[Ticker]]
    ) -> None:
        entries = [e for e in entries if e]
        if not entries:
            return
        key = _KEYS[series](session_id)
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.sadd(keys.registry(session_id), key)
            for tickers in entries:
                fields: dict[Any, Any] = {t.symbol: ticker_value(t) for t in tickers}
                pipe.xadd(key, fields, maxlen=self._caps[series], approximate=True)
            await pipe.execute()

    async def read_after(
        self,
        session_id: str,
        after: str | None,
        chunk: int = READ_CHUNK,
        *,
        series: PriceSeries = PriceSeries.RUNS,
    ) -> AsyncIterator[tuple[str, ReadResult[Ticker]]]:
        """The tickers of ``series`` recorded after the entry id ``after`` (None: all), oldest
        first, in chunks of ``chunk`` entries, each with the id of its last entry; a value that
        does not parse is in ``bad`` (key ``<stream>#<entry id>:<pair>``)."""
        key = _KEYS[series](session_id)
        start = "-" if after is None else "(" + after
        while True:
            entries = await self._range(key, start, chunk)
            if not entries:
                return
            yield entries[-1][0], _decode(key, entries)
            if len(entries) < chunk:
                return
            start = "(" + entries[-1][0]

    @redis_errors
    async def _range(self, key: str, start: str, count: int) -> list[tuple[str, dict[str, str]]]:
        return cast(
            list[tuple[str, dict[str, str]]], await self._r.xrange(key, start, "+", count=count)
        )


def _decode(key: str, entries: list[tuple[str, dict[str, str]]]) -> ReadResult[Ticker]:
    result: ReadResult[Ticker] = ReadResult()
    for entry_id, fields in entries:
        for symbol, value in fields.items():
            try:
                result.items.append(
                    codec.decode(f"{key}#{entry_id}:{symbol}", value, _parser(symbol))
                )
            except BadRecordError as e:
                result.bad.append(e)
    return result


def _parser(symbol: str) -> Callable[[Any], Ticker]:
    def parse(value: Any) -> Ticker:
        return ticker_from_value(symbol, value)

    return parse
