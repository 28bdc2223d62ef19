"""The account's executions on Kraken: WebSocket v2 ``executions`` live, REST ``TradesHistory``
for the gaps (:class:`~mmops.ports.ExecutionFeed`).

Why a direct WebSocket client rather than ccxt pro's ``watch_my_trades``:

* **Decimals.** Kraken's WebSocket v2 sends prices, quantities and fees as JSON *numbers*
  (``"last_qty": 15.44``, the ``executions`` examples of
  https://docs.kraken.com/api/docs/websocket-v2/executions); ccxt pro parses them as floats
  before mmops ever sees them. Here the JSON is read with ``parse_float=Decimal``: the digits
  Kraken sent are the digits recorded.
* **Reconnects are explicit.** ccxt pro reconnects and resubscribes inside ``watch_*``, so a
  caller cannot tell that executions may have been missed. Here a dropped, refused or silent
  connection ends :meth:`KrakenFeed.stream` with ``FeedDisconnected``; the caller reads
  :meth:`KrakenFeed.history` from its persisted cursor, then streams again.

Kraken as documented:

* Private channels live on ``wss://ws-auth.kraken.com/v2`` and need a token from REST
  ``GetWebSocketsToken``, "used within 15 minutes of creation"; each connection gets a fresh one
  ("obtain a fresh token on each connection", https://docs.kraken.com/exchange/api-reference/
  spot-websocket; https://docs.kraken.com/api-reference/trading/get-websockets-token).
* Subscribe: ``{"method": "subscribe", "params": {"channel": "executions", "token": ...,
  "snap_trades": false, "snap_orders": false}, "req_id": n}``; the ack carries ``success``
  and, when false, ``error`` (https://docs.kraken.com/api/docs/websocket-v2/executions; the
  v2 response fields, e.g. https://docs.kraken.com/exchange/api-reference/spot-websocket-v2/
  ping). No snapshot is asked for: what was missed comes from TradesHistory.
* ``heartbeat``: "sent approximately once every second in the absence of any other channel
  updates" (https://docs.kraken.com/api/docs/websocket-v2/heartbeat/); so a connection silent
  for ``idle_timeout`` seconds (default 10) is taken as dead.
* An execution with ``exec_type`` ``trade`` is a fill: ``exec_id``, ``order_id``,
  ``cl_ord_id``, ``symbol`` (v2 writes ``BTC/USD``, v1 wrote ``XBT/USD``: "Symbol format
  XBT/USD | BTC/USD", https://docs.kraken.com/exchange/api-reference/spot-websocket),
  ``side``, ``last_qty``, ``last_price``, ``fees`` (``[{"asset", "qty"}]``), ``timestamp``
  (RFC 3339). Its ``exec_id`` is the trade's txid (``T5DIUI-5N4KO-Z5BPXK`` in Kraken's
  execution example, the ``Txxxxx-xxxxx-xxxxxx`` form of trade ids; ccxt pro takes it as the
  trade id, ``parse_ws_trade``), and TradesHistory's ``result.trades`` is an object keyed by
  that same trade txid (https://docs.kraken.com/api-reference/account-data/
  get-trades-history), which ccxt's ``fetch_my_trades`` also takes as the id. So one
  execution has one ``Trade.id`` on both paths and the caller's de-duplication holds.
* TradesHistory: "50 results are returned at a time, the most recent by default", paged with
  ``ofs``; ``start`` is exclusive, ``end`` inclusive (same page; kraapi's and kraken_client's
  builders: "Starting Unix timestamp ... Exclusive"); its ``fee`` is the "total fee (quote
  currency)", ``time`` a Unix time in seconds.

Nothing here logs the token, the API key or a request body.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import aiohttp

from mmops import logs
from mmops.adapters.exchanges.ccxt_exchange import CcxtExchange
from mmops.domain.exchange import Trade
from mmops.domain.models import Side
from mmops.errors import FeedDisconnected

log = logs.get_logger("mmops.exchange.kraken_feed")

WS_URL = "wss://ws-auth.kraken.com/v2"
IDLE_TIMEOUT = 10.0  # seconds without any message (heartbeats come about every second)
CONNECT_TIMEOUT = 10.0  # seconds
HISTORY_PAGE = 50  # TradesHistory answers 50 trades a page
HISTORY_OVERLAP = 60  # seconds read again before the cursor: equal timestamps, and a trade
# TradesHistory shows a little later than the ones after it, are read again, never skipped
_ASSETS = {"XBT": "BTC", "XDG": "DOGE"}  # Kraken's v1 / REST altnames → unified codes (ccxt's)


def account_of(exchange_id: str, api_key: str | None) -> str:
    """A stable name for an account that gives its key away: the exchange id and the first 8
    hex digits of the key's SHA-256 (``kraken:1a2b3c4d``)."""
    digest = hashlib.sha256((api_key or "").encode()).hexdigest()[:8]
    return f"{exchange_id}:{digest}"


class KrakenFeed:
    """The account's executions on Kraken (module docstring), one WebSocket at a time.

    ``exchange`` is the account's CcxtExchange (tokens and TradesHistory go through it, so
    REST pacing, error mapping and secret scrubbing are its own); ``ws_url`` the private
    WebSocket v2 URL (None: Kraken's; tests: the local server's); ``account`` names the
    account's persisted cursor (None: :func:`account_of` the exchange's API key);
    ``idle_timeout`` how long a silent connection is trusted; ``connect_timeout`` bounds the
    WebSocket handshake.
    """

    def __init__(
        self,
        exchange: CcxtExchange,
        ws_url: str | None = None,
        *,
        account: str | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.account = account or account_of(exchange.name, _api_key(exchange))
        self._exchange = exchange
        self._ws_url = ws_url or WS_URL
        self._idle_timeout = idle_timeout
        self._connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._req_id = 0

    # -- history --------------------------------------------------------------------------

    async def history(self, cursor: str | None, since: datetime) -> tuple[list[Trade], str]:
        """Trades after ``cursor`` (or, with none, from ``since``), oldest first, and the
        cursor after them: the Unix time of the newest trade seen, as a decimal string.

        Reads from ``HISTORY_OVERLAP`` seconds before the cursor (``start`` is exclusive and
        several trades may share a second), so the answer may repeat trades already seen;
        their ids make that harmless. Pages of 50 are read from offset 0 until a short page:
        a trade arriving meanwhile pushes older ones one offset later (read twice, never
        skipped). Raises what CcxtExchange raises (ExchangeUnavailable, RateLimited ... to
        retry later; AuthenticationFailed to stop).
        """
        after = _cursor_time(cursor)
        start = math.floor(after) - HISTORY_OVERLAP if after is not None else None
        if start is None:
            start = math.floor(since.timestamp()) - HISTORY_OVERLAP
        found: dict[str, Trade] = {}
        offset = 0
        while True:
            # consolidate_taker=false: one entry per fill, as the WebSocket's executions send
            # them (TradesHistory "consolidate_taker: Whether or not to consolidate trades by
            # individual taker trades", default true: https://docs.kraken.com/api-reference/
            # account-data/get-trades-history). Consolidated, a taker buy that swept several
            # makers would be one id here and several on the stream: counted twice.
            params = {"start": start, "ofs": offset, "consolidate_taker": False}
            page = await self._exchange.trades_history(params)
            raw = page["trades"]
            for txid, entry in raw.items():
                trade = _history_trade(str(txid), entry)
                if trade is not None:
                    found[trade.id] = trade
            if len(raw) < HISTORY_PAGE:
                break
            offset += len(raw)
        trades = sorted(found.values(), key=lambda t: (t.timestamp, t.id))
        if after is None:
            trades = [t for t in trades if t.timestamp >= since]
        newest = max((_unix(t.timestamp) for t in trades), default=None)
        if newest is None:
            newest = after if after is not None else Decimal(math.floor(since.timestamp()))
        elif after is not None:
            newest = max(newest, after)
        log.debug("feed.history", account=self.account, trades=len(trades), offset=offset)
        return trades, str(newest)

    # -- stream ---------------------------------------------------------------------------

    async def stream(self) -> AsyncIterator[list[Trade]]:
        """Executions as Kraken pushes them, one batch per ``executions`` message.

        The first batch is empty: the subscription is acknowledged, anything filled from now
        on will come (a caller gap-fills after it). Ends with ``FeedDisconnected`` when the
        connection closes or errs, the subscription is refused, or nothing (not even a
        heartbeat) arrives for ``idle_timeout`` seconds. Raises what CcxtExchange raises for
        the token call.
        """
        token = await self._exchange.websocket_token()
        ws = await self._connect()
        try:
            self._req_id += 1
            await ws.send_str(json.dumps(_subscribe(token, self._req_id)))
            async for batch in self._batches(ws):
                yield batch
        finally:
            self._ws = None
            await ws.close()

    async def close(self) -> None:
        """Close the WebSocket and its HTTP session (safe to call twice). The CcxtExchange
        is not closed: its owner closes it."""
        if self._ws is not None:
            await self._ws.close()
            self._ws = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _connect(self) -> aiohttp.ClientWebSocketResponse:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=None, connect=self._connect_timeout)
            self._session = aiohttp.ClientSession(timeout=timeout)
        try:
            ws = await self._session.ws_connect(
                self._ws_url,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=self._connect_timeout),
                autoping=True,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise FeedDisconnected(f"kraken: cannot connect the execution feed: {e!r}") from e
        self._ws = ws
        log.info("feed.connected", account=self.account)
        return ws

    async def _batches(self, ws: aiohttp.ClientWebSocketResponse) -> AsyncIterator[list[Trade]]:
        while True:
            try:
                message = await ws.receive(timeout=self._idle_timeout)
            except TimeoutError as e:
                log.warning("feed.silent", account=self.account, seconds=self._idle_timeout)
                raise FeedDisconnected(
                    f"kraken: no message for {self._idle_timeout} s on the execution feed"
                ) from e
            except (aiohttp.ClientError, OSError) as e:
                raise FeedDisconnected(f"kraken: execution feed failed: {e!r}") from e
            if message.type in _ENDED:
                log.warning("feed.closed", account=self.account, kind=message.type.name)
                raise FeedDisconnected(f"kraken: execution feed {message.type.name.lower()}")
            if message.type is not aiohttp.WSMsgType.TEXT:
                continue
            batch = self._read(message.data)
            if batch is not None:
                yield batch

    def _read(self, text: str) -> list[Trade] | None:
        """The batch in one message: a list for an ``executions`` message (the trades in it)
        or the subscription's ack (empty), None for anything else (heartbeat, status, pong).
        Raises FeedDisconnected for a refused subscription."""
        try:
            data = json.loads(text, parse_float=Decimal)
        except ValueError:
            log.warning("feed.bad_message", account=self.account, size=len(text))
            return None
        if not isinstance(data, dict):
            return None
        if data.get("method") == "subscribe":
            if data.get("success") is not True:
                error = str(data.get("error") or "refused")[:200]
                log.warning("feed.refused", account=self.account, error=error)
                raise FeedDisconnected(f"kraken: executions subscription refused: {error}")
            log.info("feed.subscribed", account=self.account)
            return []
        if data.get("channel") != "executions":
            return None
        return list(self._trades(data.get("data") or []))

    def _trades(self, executions: Iterable[Any]) -> Iterable[Trade]:
        for execution in executions:
            if not isinstance(execution, dict) or execution.get("exec_type") != "trade":
                continue
            try:
                yield execution_trade(execution)
            except (KeyError, TypeError, ValueError, InvalidOperation) as e:
                # Left to the history read, which reports the fee in quote itself.
                log.warning(
                    "feed.bad_execution",
                    account=self.account,
                    exec_id=str(execution.get("exec_id")),
                    error=str(e)[:200],
                )


_ENDED = frozenset(
    {
        aiohttp.WSMsgType.CLOSE,
        aiohttp.WSMsgType.CLOSING,
        aiohttp.WSMsgType.CLOSED,
        aiohttp.WSMsgType.ERROR,
    }
)


def _api_key(exchange: CcxtExchange) -> str | None:
    """The exchange's API key, only ever hashed (CcxtExchange keeps it on its ccxt client)."""
    key = getattr(getattr(exchange, "_client", None), "apiKey", None)
    return key if isinstance(key, str) and key else None


def _subscribe(token: str, req_id: int) -> dict[str, Any]:
    return {
        "method": "subscribe",
        "params": {
            "channel": "executions",
            "token": token,
            "snap_trades": False,
            "snap_orders": False,
        },
        "req_id": req_id,
    }


# -- conversions ----------------------------------------------------------------------------


def execution_trade(e: Mapping[str, Any]) -> Trade:
    """A WebSocket v2 ``trade`` execution as a Trade, its fee converted to the quote currency
    (a fee in base is worth ``qty * last_price``). Raises ValueError (or KeyError) for an
    execution that cannot be read, a fee in a third asset included."""
    base, quote = (_asset(a) for a in str(e["symbol"]).split("/"))
    price = _decimal(e["last_price"])
    fee = Decimal(0)
    for item in e.get("fees") or []:
        asset, qty = _asset(str(item["asset"])), _decimal(item["qty"])
        if asset == quote:
            fee += qty
        elif asset == base:
            fee += qty * price
        else:
            raise ValueError(f"fee in {asset}, neither {base} nor {quote}")
    cl_ord_id = e.get("cl_ord_id")
    return Trade(
        id=str(e["exec_id"]),
        order_id=str(e["order_id"]),
        symbol=f"{base}/{quote}",
        side=Side(e["side"]),
        price=price,
        amount=_decimal(e["last_qty"]),
        fee=fee,
        timestamp=datetime.fromisoformat(str(e["timestamp"])).astimezone(UTC),
        client_order_id=str(cl_ord_id) if cl_ord_id else None,
    )


def _history_trade(txid: str, t: Any) -> Trade | None:
    """A TradesHistory entry (``symbol`` added by CcxtExchange) as a Trade; None, logged, for
    one that cannot be read (it is not recorded; the same read would fail again)."""
    try:
        cl_ord_id = t.get("cl_ord_id")
        return Trade(
            id=txid,
            order_id=str(t["ordertxid"]),
            symbol=str(t["symbol"]),
            side=Side(t["type"]),
            price=_decimal(t["price"]),
            amount=_decimal(t["vol"]),
            fee=_decimal(t["fee"]),
            timestamp=datetime.fromtimestamp(float(t["time"]), UTC),
            client_order_id=str(cl_ord_id) if cl_ord_id else None,
        )
    except (AttributeError, KeyError, TypeError, ValueError, InvalidOperation) as e:
        log.warning("feed.bad_history_trade", trade=txid, error=str(e)[:200])
        return None


def _decimal(value: Any) -> Decimal:
    if isinstance(value, float):  # never produced by parse_float=Decimal or Kraken's REST
        raise ValueError("a float where a decimal was expected")
    number = value if isinstance(value, Decimal) else Decimal(str(value))
    if not number.is_finite():
        raise ValueError(f"not a finite number: {value!r}")
    return number


def _asset(code: str) -> str:
    return _ASSETS.get(code, code)


def _unix(moment: datetime) -> Decimal:
    return Decimal(str(moment.timestamp()))


def _cursor_time(cursor: str | None) -> Decimal | None:
    """The cursor's Unix time; None for none, or for one that does not parse (logged: the
    read then starts from ``since``)."""
    if cursor is None:
        return None
    try:
        moment = Decimal(cursor)
    except InvalidOperation:
        moment = Decimal("NaN")
    if not moment.is_finite():
        log.warning("feed.bad_cursor", cursor=cursor[:40])
        return None
    return moment
