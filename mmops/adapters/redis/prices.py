"""The price history of a session: the best bid and ask of its pairs as each settlement run
fetched them, in ``prices:{S}`` (docs/REDIS_SCHEMA.md). Migration copies it to PostgreSQL
``prices`` (``mmops.adapters.postgres.analytics_sync``); markouts and the tier backtest read it
there.

``prices:{S}`` is a STREAM, one entry per run: one field per pair, its value
``"<bid> <ask> <time ISO 8601>"`` (the ticker's own time). An append is one XADD with an
approximate MAXLEN (bounded growth: the oldest runs are trimmed first), queued in one MULTI with
the key's registration in ``keys:{S}``: one round trip, on the session's slot (cluster-safe).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, cast

from mmops.adapters.redis import codec, keys
from mmops.adapters.redis.client import Redis, redis_errors
from mmops.domain.models import Ticker, check_symbol
from mmops.domain.records import ReadResult
from mmops.errors import BadRecordError

DEFAULT_MAX_RUNS = 20_000  # runs kept per session: 41 days of 3-minute runs
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
    """Append and read ``prices:{S}``."""

    def __init__(self, redis: Redis, max_runs: int = DEFAULT_MAX_RUNS) -> None:
        if max_runs < 1:
            raise ValueError(f"max_runs must be at least 1, got {max_runs}")
        self._r = redis
        self._max_runs = max_runs

    @redis_errors
    async def record(self, session_id: str, tickers: Sequence[Ticker]) -> None:
        """Append one run's tickers of the session's pairs (nothing for none): one round trip."""
        if not tickers:
            return
        key = keys.prices(session_id)
        fields: dict[Any, Any] = {t.symbol: ticker_value(t) for t in tickers}
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.sadd(keys.registry(session_id), key)
            pipe.xadd(key, fields, maxlen=self._max_runs, approximate=True)
            await pipe.execute()

    async def read_after(
        self, session_id: str, after: str | None, chunk: int = READ_CHUNK
    ) -> AsyncIterator[tuple[str, ReadResult[Ticker]]]:
        """The tickers recorded after the entry id ``after`` (None: all), oldest run first, in
        chunks of ``chunk`` runs, each with the id of its last entry; a value that does not
        parse is in ``bad`` (key ``prices:{S}#<entry id>:<pair>``)."""
        key = keys.prices(session_id)
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
