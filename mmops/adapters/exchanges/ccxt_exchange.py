"""The live exchange: any ccxt exchange (Kraken by default) behind the ``Exchange`` port.

What it adds on top of ccxt:

* **Batches.** Up to 15 orders of one pair go out as one ``create_orders`` call (Kraken's
  AddOrderBatch) where the exchange has it, one by one otherwise. Every order carries
  ``postOnly`` and ``clientOrderId`` (Kraken ``oflags=post``, ``cl_ord_id``). Each order's outcome
  lands in its own ``PlacementResult``; an error of the whole call (a timeout, a 5xx) lands in
  every result, so the caller looks the client ids up before retrying anything.
* **Deadlines.** An order's ``deadline`` goes out as Kraken's ``deadline`` (RFC3339, UTC, to
  the millisecond): on AddOrder with the order, on AddOrderBatch once for the whole request
  (the earliest of the batch). Kraken refuses a request that reaches it later
  (``DeadlineRefused``: nothing was placed). A request whose deadline the trading counter's
  wait would leave less than Kraken's 2 s ahead is declined the same way without being sent.
* **Lookups by client id** return the open order with that id, else the most recently
  created closed one (Kraken keeps a ``cl_ord_id`` unique among open orders only). Kraken's
  closed orders are paged through, 50 at a time, newest first, up to the newest 500; the
  answer is filtered here, whether or not the server applied the ``cl_ord_id`` filter.
* **Kraken's trading counter.** ccxt's REST limiter knows nothing of the per-pair counter that
  placing and cancelling raise; a client-side model of it (:mod:`mmops.domain.ratelimit`) makes a
  burst wait instead of collecting ``EOrder:Rate limit exceeded``. Its threshold and decay are the
  configured verification tier's (``tier``). ``admit`` waits for a batch's room *before* the
  caller stamps its deadline and reserves it; the ``place_batch`` that follows spends it.
* **Kraken's REST call counter** replaces ccxt's generic pacing (which spaces private calls
  1 s per cost unit and charges 3 units for a balance or an order query): a model of the tier's
  counter (max 15, -1 per 3 s on Starter; history calls +2) makes a private call wait only when
  the counter would pass its max. Order calls cost nothing on it, and a call waits *before* it
  queues for the private connection, so placing an order is never held behind a paced read.
* **Caches.** Markets for an hour, tickers for a few seconds; balances are always fetched.
* **Kraken's answers as documented.** A pair in a restricted mode is listed with its status
  (take-profits go out on ``post_only`` and ``limit_only`` pairs, none on ``cancel_only`` or
  ``reduce_only``); the tick is ``tick_size``; the free balance is BalanceEx's
  ``balance + credit - credit_used - hold_trade``, with ``.F`` (Kraken Rewards) balances counted
  toward their asset; every order pins its fee to the quote currency (``oflags=fciq``), since
  Kraken takes a sell's fee in base by default and the break-even maths is in quote.
* **One error mapping.** ccxt's exceptions become ``mmops.errors`` here and nowhere else
  (:mod:`.ccxt_errors`), with secrets scrubbed from every message.
* **Private calls one at a time.** Kraken refuses a nonce that is not above the last one it saw
  for the key; concurrent requests on separate connections can arrive out of order, so signed
  calls are sent one after the other (public ones are not).
* **Dry-run.** Nothing is placed or cancelled: no order call is sent at all. A placement returns
  a synthetic open order ``dry-run-<client id>`` (after the same local checks and the same
  markets), remembered so later look-ups, cancels and ``open_orders`` see it; reads (markets,
  tickers, balances, real open orders) still go to the exchange.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import ccxt.async_support as ccxt_async
from ccxt.base import errors as cx

from mmops import logs
from mmops.adapters.exchanges.ccxt_convert import (
    ORDER_STATUS,
    as_dict,
    markets_from,
    order_from,
    ticker_from,
    to_decimal,
)
from mmops.adapters.exchanges.ccxt_errors import (
    KrakenClient,
    map_error,
    order_error,
    safe_text,
)
from mmops.domain.exchange import (
    ExchangeOrder,
    MarketRule,
    OrderRequest,
    PlacementResult,
    Trade,
    broken_rule,
    check_batch,
    deadline_fault,
    preferred,
)
from mmops.domain.models import ZERO, Balance, Market, OrderStatus, Side, Ticker
from mmops.domain.ratelimit import (
    KRAKEN_TIERS,
    CounterState,
    TradingCounter,
    cancel_penalty,
    rest_cost,
)
from mmops.errors import (
    AuthenticationFailed,
    BadRecordError,
    DeadlineRefused,
    ExchangeRejected,
    ExchangeUnavailable,
    MinimumNotMet,
    MmopsError,
    OrderNotFound,
)

log = logs.get_logger("mmops.exchange.ccxt")

MARKET_TTL = 3600.0  # seconds
TICKER_TTL = 3.0  # seconds
DRY_RUN_PREFIX = "dry-run-"
_PLACED_MEMORY = 300.0  # seconds: older orders cost nothing to cancel
CLOSED_PAGE = 50  # Kraken's ClosedOrders answers 50 orders a page
CLOSED_PAGES = 10  # a lookup by client id reads at most the newest 500 closed orders
QUERY_ORDERS_BATCH = 50  # Kraken's QueryOrders: "50 maximum" txids a call
QUERY_TRADES_BATCH = 20  # Kraken's QueryTrades: "20 maximum" txids a call
_WIRE = logging.getLogger("mmops.exchange.ccxt.wire")
REWARDS_SUFFIX = ".F"  # Kraken Rewards balances, spent through their base asset
FEE_IN_QUOTE = "fciq"
# The Kraken endpoint behind each ccxt method the adapter calls (for the REST call counter;
# anything else counts 1).
_ENDPOINTS = {
    "fetch_balance": "BalanceEx",
    "fetch_order": "QueryOrders",
    "fetch_open_orders": "OpenOrders",
    "fetch_closed_orders": "ClosedOrders",
    "fetch_my_trades": "TradesHistory",
    "fetch_orders_by_ids": "QueryOrders",
    "fetch_order_trades": "QueryTrades",
    "create_order": "AddOrder",
    "create_orders": "AddOrderBatch",
    "edit_order": "AmendOrder",
    "cancel_order": "CancelOrder",
    "cancel_orders": "CancelOrderBatch",
}


class CcxtExchange:
    """An exchange reached through ccxt's async API.

    ``base_url`` replaces the REST root (tests: the local Kraken server). ``counter`` is the
    per-pair trading counter to respect (the ``tier``'s for ``kraken``: starter, intermediate
    or pro; none for other exchanges); ``counter_headroom`` is kept free under its threshold
    (and the REST counter's) for latency jitter. ``timeout`` is per HTTP call, in seconds.
    ``rate_limit_ms`` keeps ccxt's own REST limiter at that interval instead of the model of
    Kraken's REST counter (a test shortcut); ``rest_pacing=False`` turns the model off (a test
    server that does not count). ``monotonic`` and ``sleep`` are the clock pacing reads and how
    it waits (tests pass a simulated pair).

    Every method raises only ``mmops.errors`` (besides ValueError for a malformed batch):
    ExchangeTimeout, ExchangeUnavailable or RateLimited to retry later, AuthenticationFailed
    to stop and alert, an ExchangeRejected to record.
    """

    def __init__(
        self,
        exchange_id: str = "kraken",
        api_key: str | None = None,
        api_secret: str | None = None,
        *,
        base_url: str | None = None,
        dry_run: bool = False,
        counter: TradingCounter | None = None,
        timeout: float = 10.0,
        rate_limit_ms: float | None = None,
        market_ttl: float = MARKET_TTL,
        ticker_ttl: float = TICKER_TTL,
        counter_headroom: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
        tier: str = "starter",
        rest_pacing: bool = True,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.name = exchange_id
        # A stable, non-secret account name: the exchange id and 8 hex digits of the key's
        # SHA-256 (as the fill feed's ``account_of``), for the balance reservation ledger.
        key_digest = hashlib.sha256((api_key or "").encode()).hexdigest()[:8]
        self.account = f"{exchange_id}:{key_digest}"
        self.dry_run = dry_run
        self._secrets = tuple(s for s in (api_key, api_secret) if s)
        logs.register_secrets(self._secrets)
        _install_wire_filter()
        kraken = exchange_id == "kraken"
        if tier not in KRAKEN_TIERS:
            raise ValueError(f"unknown Kraken tier {tier!r}: use one of {sorted(KRAKEN_TIERS)}")
        model_rest = kraken and rest_pacing and rate_limit_ms is None
        self._client = _client(
            exchange_id, api_key, api_secret, base_url, timeout, rate_limit_ms, not model_rest
        )
        if counter is None and kraken:
            counter = KRAKEN_TIERS[tier].trading
        self._counters = PairCounters(counter, counter_headroom, monotonic)
        self._rest = PairCounters(
            KRAKEN_TIERS[tier].rest if model_rest else None, counter_headroom, monotonic
        )
        self._sleep = sleep
        self._fee_in_quote = kraken
        self._monotonic = monotonic
        self._market_ttl = market_ttl
        self._ticker_ttl = ticker_ttl
        self._markets: dict[str, Market] | None = None
        self._markets_at = 0.0
        self._markets_lock = asyncio.Lock()
        self._tickers: dict[str, tuple[float, Ticker]] = {}
        self._private_lock = asyncio.Lock()
        self._placed_at: dict[str, float] = {}
        self._dry_orders: dict[str, ExchangeOrder] = {}

    async def __aenter__(self) -> CcxtExchange:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    # -- reads ----------------------------------------------------------------------------

    async def markets(self) -> dict[str, Market]:
        """Every spot pair with a ``BASE/QUOTE`` symbol, cached for ``market_ttl`` seconds."""
        async with self._markets_lock:
            now = self._monotonic()
            if self._markets is None or now - self._markets_at > self._market_ttl:
                raw = await self._call(False, self._client.load_markets, True)
                self._markets = markets_from(raw)
                self._markets_at = now
            return dict(self._markets)

    async def tickers(self, symbols: Sequence[str]) -> dict[str, Ticker]:
        """Best bid and ask per symbol, cached for ``ticker_ttl`` seconds.

        A pair the exchange quotes no positive bid and ask for is left out of the answer.
        """
        await self.markets()
        now = self._monotonic()
        wanted = list(dict.fromkeys(symbols))
        stale = [s for s in wanted if s not in self._tickers or self._expired(s, now)]
        if stale:
            raw = await self._call(False, self._client.fetch_tickers, stale)
            wall = datetime.now(UTC)
            for symbol in stale:
                ticker = ticker_from(symbol, raw.get(symbol), wall)
                if ticker is None:
                    self._tickers.pop(symbol, None)
                else:
                    self._tickers[symbol] = (now, ticker)
        return {s: self._tickers[s][1] for s in wanted if s in self._tickers}

    async def balances(self) -> dict[str, Balance]:
        """Free, used and total per asset, fetched on every call."""
        raw = await self._call(True, self._client.fetch_balance)
        return self._balances(raw)

    async def fetch_order(self, symbol: str, order_id: str) -> ExchangeOrder:
        """An order in any state; raises OrderNotFound (also for an order of another pair)."""
        if order_id in self._dry_orders:
            return self._dry_orders[order_id]
        raw = await self._call(True, self._client.fetch_order, order_id, symbol)
        order = order_from(raw, symbol, self.name)
        if order.symbol != symbol:
            raise OrderNotFound(f"order {order_id} is on {order.symbol}, not {symbol}")
        return order

    async def open_orders(self, symbol: str | None = None) -> list[ExchangeOrder]:
        """Open orders (of one pair, or all); an order the exchange reports garbled is skipped."""
        raw = await self._call(True, self._client.fetch_open_orders, symbol)
        orders = self._readable(raw, symbol)
        dry = [o for o in self._dry_orders.values() if o.status is OrderStatus.OPEN]
        return orders + [o for o in dry if symbol is None or o.symbol == symbol]

    async def fetch_orders(self, order_ids: Sequence[str]) -> dict[str, ExchangeOrder]:
        """Orders of any pair and state by id; ids the exchange does not know are absent.

        On Kraken one ``QueryOrders`` per ``QUERY_ORDERS_BATCH`` ids ("Comma delimited list of
        transaction IDs to query info about (50 maximum)",
        https://docs.kraken.com/api-reference/account-data/get-orders-info), through ccxt's
        ``fetch_orders_by_ids``; elsewhere one ``fetch_order`` per id. An order reported
        garbled is left out (logged), as by ``open_orders``."""
        found = {oid: self._dry_orders[oid] for oid in order_ids if oid in self._dry_orders}
        wanted = [oid for oid in dict.fromkeys(order_ids) if oid not in found]
        if self.name != "kraken":
            for oid in wanted:
                try:
                    raw = await self._call(True, self._client.fetch_order, oid)
                except OrderNotFound:
                    continue
                found.update((o.id, o) for o in self._readable([raw], None))
            return found
        await self.markets()
        for start in range(0, len(wanted), QUERY_ORDERS_BATCH):
            found.update(await self._query_orders(wanted[start : start + QUERY_ORDERS_BATCH]))
        return found

    async def _query_orders(self, chunk: list[str]) -> dict[str, ExchangeOrder]:
        """One QueryOrders; if the venue refuses the whole call for an id it does not know
        (Kraken does not say whether it leaves such an id out or fails the call), the chunk is
        halved until the unknown id stands alone and is left out, so one id never hides 49."""
        try:
            raw = await self._call(True, self._client.fetch_orders_by_ids, chunk)
        except (OrderNotFound, ExchangeRejected):  # "EOrder:Invalid order" is an InvalidOrder
            if len(chunk) == 1:
                return {}
            half = len(chunk) // 2
            return {**await self._query_orders(chunk[:half]),
                    **await self._query_orders(chunk[half:])}  # fmt: skip
        return {o.id: o for o in self._readable(raw, None) if o.id in chunk}

    async def order_trades(self, symbol: str, order_id: str) -> list[Trade]:
        """The order's executions, oldest first, each by its trade id (Kraken: the trade's
        txid, as the execution feed reports it). On Kraken: ``QueryOrders`` with
        ``trades=true`` names the order's trades, ``QueryTrades`` reads them, up to
        ``QUERY_TRADES_BATCH`` a call (https://docs.kraken.com/api-reference/account-data/
        get-orders-info, .../get-trades-info); elsewhere ccxt's ``fetch_order_trades``.
        Raises OrderNotFound for an order the exchange does not know on ``symbol``."""
        if order_id in self._dry_orders:
            return []
        order = await self.fetch_order(symbol, order_id)  # OrderNotFound
        if self.name != "kraken":
            raw = await self._call(True, self._client.fetch_order_trades, order_id, symbol)
            return sorted((_ccxt_trade(t, order) for t in raw or []), key=lambda t: t.timestamp)
        client = self._client
        answer = await self._call(
            True, client.privatePostQueryOrders, {"txid": order_id, "trades": True}
        )
        info = as_dict(as_dict(as_dict(answer).get("result")).get(order_id))
        trade_ids = [str(t) for t in info.get("trades") or []]
        trades: list[Trade] = []
        for start in range(0, len(trade_ids), QUERY_TRADES_BATCH):
            chunk = trade_ids[start : start + QUERY_TRADES_BATCH]

            async def fetch_order_trades(txids: str) -> Any:  # _ENDPOINTS: QueryTrades
                return await client.privatePostQueryTrades({"txid": txids})

            answer = await self._call(True, fetch_order_trades, ",".join(chunk))
            raw = as_dict(as_dict(answer).get("result"))
            trades.extend(_kraken_trade(txid, t, order) for txid, t in raw.items())
        return sorted(trades, key=lambda t: t.timestamp)

    async def find_by_client_id(self, symbol: str, client_order_id: str) -> ExchangeOrder | None:
        """The open order placed with ``client_order_id``, else the most recently created
        closed one, or None.

        Kraken keeps a ``cl_ord_id`` unique among open orders only, so one id may name several
        closed orders (ccxt lists them oldest first). Open orders are asked first, then closed
        ones: an order that fills in between is still found, because closed orders stay closed.
        On Kraken closed orders come 50 a page, newest first, and are paged through
        (:meth:`_find_closed`).
        """
        dry = preferred(
            o
            for o in self._dry_orders.values()
            if o.client_order_id == client_order_id and o.symbol == symbol
        )
        if dry is not None:
            return dry
        params = {"clientOrderId": client_order_id}
        raw = await self._call(True, self._client.fetch_open_orders, symbol, None, None, params)
        if mine := self._with_client_id(raw, symbol, client_order_id):
            return preferred(mine)
        if self.name == "kraken":
            return await self._find_closed(symbol, client_order_id)
        raw = await self._call(True, self._client.fetch_closed_orders, symbol, None, None, params)
        return preferred(self._with_client_id(raw, symbol, client_order_id))

    def _with_client_id(self, raw: Any, symbol: str, client_order_id: str) -> list[ExchangeOrder]:
        """The orders of ``symbol`` in a ccxt answer that carry ``client_order_id``: the
        answer is filtered here whether or not the exchange applied the filter asked for."""
        return [o for o in self._readable(raw, symbol) if o.client_order_id == client_order_id]

    async def _find_closed(self, symbol: str, client_order_id: str) -> ExchangeOrder | None:
        """The most recent closed Kraken order with ``client_order_id``, paging ClosedOrders.

        ClosedOrders answers 50 at a time, the most recent first, from offset ``ofs``
        (https://docs.kraken.com/api-reference/account-data/get-closed-orders). The
        ``cl_ord_id`` filter goes along (the current reference lists it; older ones do not), but
        the answer is filtered here as well: pages are read, for all pairs, until one holds the
        id or a short page shows there are no more. A page earlier holds newer orders, so the
        first page with a match has the most recent one; orders that close meanwhile only push
        others to later offsets (seen twice, never skipped). At most ``CLOSED_PAGES`` pages
        (the newest 500 closed orders): each costs 1 on Kraken's REST call counter (Starter:
        max 15, -1 per 3 s), and an order is looked up by client id soon after it was sent.
        Raises what ``_call`` raises, and ExchangeUnavailable when the pages run out before the
        closed orders do: "not found" must mean absent, since the caller then places anew.
        """
        for page in range(CLOSED_PAGES):
            params = {"clientOrderId": client_order_id, "ofs": page * CLOSED_PAGE}
            fetch = self._client.fetch_closed_orders
            raw = await self._call(True, fetch, None, None, None, params) or []
            if mine := self._with_client_id(raw, symbol, client_order_id):
                return preferred(mine)
            if len(raw) < CLOSED_PAGE:
                return None
        log.warning("exchange.lookup_gave_up", exchange=self.name, pair=symbol, pages=CLOSED_PAGES)
        raise ExchangeUnavailable(
            f"lookup of {client_order_id} inconclusive: not in the newest "
            f"{CLOSED_PAGES * CLOSED_PAGE} closed orders"
        )

    # -- writes ---------------------------------------------------------------------------

    async def admit(self, symbol: str, orders: int) -> None:
        """Wait until the pair's trading counter (the model) has room for ``orders`` more.

        The room is reserved now and held for the pair's next ``place_batch``, which spends it
        instead of waiting again. In dry-run nothing is sent, so nothing waits."""
        if self.dry_run:
            return
        await self._pause(symbol, self._counters.admit(symbol, orders))

    async def place_batch(self, orders: Sequence[OrderRequest]) -> list[PlacementResult]:
        """Place up to MAX_BATCH post-only limit orders of one pair; one result per order.

        Raises ValueError for a mixed or oversized batch, and AuthenticationFailed when the
        exchange refuses the key (no order of the batch can succeed). Every other failure is
        in the results: a refusal of one order in its own result, a failure of the whole call
        (timeout, 5xx, rate limit) in all of them.
        """
        check_batch(orders)
        if not orders:
            return []
        market = (await self.markets()).get(orders[0].symbol)
        outcomes: list[ExchangeOrder | MmopsError | None] = [
            _local_refusal(o, market) for o in orders
        ]
        todo = [o for o, outcome in zip(orders, outcomes, strict=True) if outcome is None]
        if todo:
            sent = iter(await self._send(todo))
            outcomes = [next(sent) if outcome is None else outcome for outcome in outcomes]
        results = []
        for request, outcome in zip(orders, outcomes, strict=True):
            if isinstance(outcome, ExchangeOrder):
                results.append(PlacementResult(request, order=outcome))
            else:
                assert outcome is not None
                results.append(PlacementResult(request, error=outcome))
        log.debug(
            "exchange.batch",
            exchange=self.name,
            pair=orders[0].symbol,
            orders=len(orders),
            placed=sum(r.placed for r in results),
            dry_run=self.dry_run,
        )
        return results

    async def cancel(self, symbol: str, order_id: str) -> ExchangeOrder:
        """Cancel an open order and return it as it now stands.

        Raises OrderNotFound if there is no such open order. Waits first if the pair's trading
        counter has no room for the cancel's penalty. In dry-run nothing is cancelled: the
        order is returned as it would be.
        """
        if self.dry_run:
            order = await self.fetch_order(symbol, order_id)
            if order.status is not OrderStatus.OPEN:
                raise OrderNotFound(f"order {order_id} is {order.status.value}, not open")
            canceled = replace(order, status=OrderStatus.CANCELED)
            if order_id in self._dry_orders:
                self._dry_orders[order_id] = canceled
            return canceled
        estimate = self._cancel_estimate(order_id)
        await self._wait(symbol, estimate)
        await self._call(True, self._client.cancel_order, order_id, symbol)
        order = await self.fetch_order(symbol, order_id)
        age = (datetime.now(UTC) - order.created_at).total_seconds()
        self._counters.charge(symbol, cancel_penalty(age) - estimate)
        self._placed_at.pop(order_id, None)
        return order

    async def amend(self, symbol: str, order_id: str, price: Decimal) -> ExchangeOrder:
        """Move an open order to ``price`` in place (ccxt's ``edit_order``: Kraken's
        AmendOrder, same txid and cl_ord_id, post-only kept) and return it as it now stands.

        Raises OrderNotFound if it is not open, an ExchangeRejected (PostOnlyWouldTake for a
        crossing amend) if the exchange refuses it or cannot amend. In dry-run nothing is sent.
        """
        order = await self.fetch_order(symbol, order_id)
        if order.status is not OrderStatus.OPEN:
            raise OrderNotFound(f"order {order_id} is {order.status.value}, not open")
        market = (await self.markets()).get(symbol)
        if market is None or broken_rule(replace(_request_of(order), price=price), market):
            raise ExchangeRejected(f"{symbol}: cannot amend {order_id} to {price}")
        if self.dry_run:
            amended = replace(order, price=price)
            if order_id in self._dry_orders:
                self._dry_orders[order_id] = amended
            return amended
        if not self._client.has.get("editOrder"):
            raise ExchangeRejected(f"{self.name} cannot amend orders in place")
        await self._call(
            True,
            self._client.edit_order,
            order_id,
            symbol,
            "limit",
            order.side.value,
            None,
            format(price, "f"),
            {"postOnly": True},
        )
        return await self.fetch_order(symbol, order_id)

    async def websocket_token(self) -> str:
        """A fresh Kraken WebSocket token (REST ``GetWebSocketsToken``: "should be used within
        15 minutes of creation", https://docs.kraken.com/api-reference/trading/get-websockets-token).
        The token is a credential: never log it. Raises what every private call raises."""
        raw = await self._call(True, self._client.privatePostGetWebSocketsToken)
        token = (raw.get("result") or {}).get("token") if isinstance(raw, dict) else None
        if not isinstance(token, str) or not token:
            raise ExchangeUnavailable(f"{self.name}: GetWebSocketsToken answered no token")
        return token

    async def trades_history(self, params: dict[str, Any]) -> dict[str, Any]:
        """One page of Kraken's ``TradesHistory`` (``start``, ``end``, ``ofs``) as Kraken
        answers it: ``trades`` keyed by trade txid, values as sent (strings stay strings),
        ``count``. Each trade gains ``symbol``, its pair's unified symbol from ccxt's markets.
        Counts +2 on the REST call counter model, as a history call."""
        await self.markets()
        client = self._client

        async def fetch_my_trades() -> Any:  # the name _ENDPOINTS maps to TradesHistory
            return await client.privatePostTradesHistory(params)

        raw = await self._call(True, fetch_my_trades)
        result = raw.get("result") if isinstance(raw, dict) else None
        trades = result.get("trades") if isinstance(result, dict) else None
        if not isinstance(trades, dict):
            raise ExchangeUnavailable(f"{self.name}: TradesHistory answered no trades")
        for trade in trades.values():
            if isinstance(trade, dict):
                trade["symbol"] = client.safe_market(trade.get("pair"))["symbol"]
        return result  # type: ignore[return-value]  # a dict, checked above

    async def close(self) -> None:
        """Close ccxt's HTTP session (safe to call twice)."""
        await self._client.close()

    # -- internals ------------------------------------------------------------------------

    async def _call(self, private: bool, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Run one ccxt call, mapping its errors into ``mmops.errors`` (``raise ... from``).

        A private call first waits for room on the REST call counter, outside the private
        lock: a paced read never holds up an order call queued behind it."""
        if private:
            endpoint = _ENDPOINTS.get(getattr(fn, "__name__", ""), "")
            delay = self._rest.reserve("rest", rest_cost(endpoint))
            if delay > 0:
                log.debug("exchange.rest_wait", exchange=self.name, call=endpoint, seconds=delay)
                await self._sleep(delay)
        try:
            if private:
                async with self._private_lock:
                    return await fn(*args)
            return await fn(*args)
        except (cx.BaseError, TimeoutError) as e:
            mapped = map_error(e, self._secrets)
            log.debug("exchange.error", exchange=self.name, error=type(mapped).__name__)
            raise mapped from e

    async def _send(self, requests: list[OrderRequest]) -> list[ExchangeOrder | MmopsError]:
        if self.dry_run:
            return [self._dry_place(r) for r in requests]
        symbol, cost = requests[0].symbol, len(requests)
        late = self._late(requests, self._counters.placement(symbol, cost, commit=False))
        if late is not None:
            return [late] * len(requests)
        await self._pause(symbol, self._counters.placement(symbol, cost, commit=True))
        if len(requests) > 1 and self._client.has.get("createOrders"):
            return await self._send_batch(requests)
        return [await self._send_one(r) for r in requests]

    def _late(self, requests: Sequence[OrderRequest], delay: float) -> DeadlineRefused | None:
        """The refusal Kraken would answer if the request left after the counter's ``delay``:
        its deadline (the earliest of the batch) passed, or under 2 s ahead. Nothing is sent
        for such a request: it is declined here, so it can never land late."""
        deadlines = [r.deadline for r in requests if r.deadline is not None]
        if not deadlines:
            return None
        deadline = min(deadlines)
        fault = deadline_fault(deadline, datetime.now(UTC) + timedelta(seconds=delay))
        if fault is None:
            return None
        log.info(
            "exchange.deadline_declined",
            exchange=self.name,
            pair=requests[0].symbol,
            orders=len(requests),
            wait=round(delay, 3),
            fault=fault.value,
        )
        return DeadlineRefused(
            f"{requests[0].symbol}: deadline {rfc3339(deadline)} cannot be met after a "
            f"{delay:.1f} s trading-counter wait ({fault.value}); not sent"
        )

    async def _send_one(self, r: OrderRequest) -> ExchangeOrder | MmopsError:
        try:
            raw = await self._call(
                True,
                self._client.create_order,
                r.symbol,
                "limit",
                r.side.value,
                format(r.amount, "f"),
                format(r.price, "f"),
                {**_params(r, self._fee_in_quote), **_deadline_param([r])},
            )
        except AuthenticationFailed:
            raise
        except MmopsError as e:
            return e
        return self._outcome(r, raw)

    async def _send_batch(self, requests: list[OrderRequest]) -> list[ExchangeOrder | MmopsError]:
        batch = [
            {
                "symbol": r.symbol,
                "type": "limit",
                "side": r.side.value,
                "amount": format(r.amount, "f"),
                "price": format(r.price, "f"),
                "params": _params(r, self._fee_in_quote),
            }
            for r in requests
        ]
        try:
            raw = await self._call(
                True, self._client.create_orders, batch, _deadline_param(requests)
            )
        except AuthenticationFailed:
            raise
        except MmopsError as e:
            return [e] * len(requests)
        if not isinstance(raw, list) or len(raw) != len(requests):
            lost = ExchangeUnavailable(
                f"{self.name}: a batch of {len(requests)} came back with "
                f"{len(raw) if isinstance(raw, list) else 'no'} answers; look the ids up"
            )
            return [lost] * len(requests)
        return [self._outcome(r, o) for r, o in zip(requests, raw, strict=True)]

    def _outcome(self, r: OrderRequest, raw: Any) -> ExchangeOrder | MmopsError:
        """One order's answer: placed, refused (its error string) or unknown."""
        info = raw.get("info") if isinstance(raw, dict) else None
        error = info.get("error") if isinstance(info, dict) else None
        if error:
            return order_error(self._client, str(error), self._secrets)
        order_id = raw.get("id") if isinstance(raw, dict) else None
        status = ORDER_STATUS.get(raw.get("status") if isinstance(raw, dict) else None)
        if status is OrderStatus.REJECTED:
            return ExchangeRejected(safe_text(f"{self.name}: order rejected: {info}"))
        if not order_id:
            return ExchangeUnavailable(f"{self.name}: no order id in the answer; look it up")
        self._remember(str(order_id))
        return ExchangeOrder(
            id=str(order_id),
            symbol=r.symbol,
            side=r.side,
            price=r.price,
            amount=r.amount,
            status=status or OrderStatus.OPEN,
            created_at=datetime.now(UTC),
            client_order_id=r.client_order_id,
        )

    def _expired(self, symbol: str, now: float) -> bool:
        return now - self._tickers[symbol][0] > self._ticker_ttl

    def _dry_place(self, r: OrderRequest) -> ExchangeOrder:
        order = ExchangeOrder(
            id=f"{DRY_RUN_PREFIX}{r.client_order_id}",
            symbol=r.symbol,
            side=r.side,
            price=r.price,
            amount=r.amount,
            status=OrderStatus.OPEN,
            created_at=datetime.now(UTC),
            client_order_id=r.client_order_id,
        )
        self._dry_orders[order.id] = order
        return order

    async def _wait(self, symbol: str, cost: float) -> None:
        await self._pause(symbol, self._counters.reserve(symbol, cost))

    async def _pause(self, symbol: str, delay: float) -> None:
        """Wait what the pair's trading counter asks (``delay`` seconds) before acting."""
        if delay > 0:
            log.debug("exchange.counter_wait", exchange=self.name, pair=symbol, seconds=delay)
            await self._sleep(delay)

    def _remember(self, order_id: str) -> None:
        now = self._monotonic()
        if len(self._placed_at) > 10_000:
            self._placed_at = {k: t for k, t in self._placed_at.items() if now - t < _PLACED_MEMORY}
        self._placed_at[order_id] = now

    def _cancel_estimate(self, order_id: str) -> int:
        """The cancel penalty if this process placed the order; 0 (corrected after) if not."""
        placed = self._placed_at.get(order_id)
        return 0 if placed is None else cancel_penalty(self._monotonic() - placed)

    def _readable(self, raw: Any, symbol: str | None) -> list[ExchangeOrder]:
        orders = []
        for item in raw or []:
            try:
                order = order_from(item, symbol, self.name)
            except BadRecordError as e:
                log.warning("exchange.bad_order", exchange=self.name, error=str(e))
                continue
            if symbol is None or order.symbol == symbol:
                orders.append(order)
        return orders

    def _balances(self, raw: Any) -> dict[str, Balance]:
        """Per asset from the exchange's own strings when it gives them (Kraken BalanceEx).

        Kraken: "available balance = balance + credit - credit_used - hold_trade"
        (https://docs.kraken.com/api-reference/account-data/get-extended-balance). A ``.F``
        asset ("balances earning automatically in Kraken Rewards") is spent through its base
        asset ("use the base asset (e.g. USDT to transact with your USDT and USDT.F
        balances)", same page), so ``XBT.F`` counts toward BTC rather than standing apart.
        """
        info = raw.get("info") if isinstance(raw, dict) else None
        result = info.get("result") if isinstance(info, dict) else None
        if not (
            isinstance(result, dict)
            and all(isinstance(v, dict) and "balance" in v for v in result.values())
        ):
            totals = raw.get("total") or {}
            used = raw.get("used") or {}
            balances = {}
            for code, t in totals.items():
                total = max(to_decimal(t) or ZERO, ZERO)
                held = min(max(to_decimal(used.get(code)) or ZERO, ZERO), total)
                balances[code] = Balance(code, free=total - held, used=held, total=total)
            return balances
        rows: dict[str, tuple[Decimal, Decimal, Decimal]] = {}  # total, credit, held
        for asset_id, v in result.items():
            base_id = asset_id[: -len(REWARDS_SUFFIX)]
            rewards = asset_id.endswith(REWARDS_SUFFIX) and bool(base_id)
            code = self._client.safe_currency_code(base_id if rewards else asset_id)
            credit = (to_decimal(v.get("credit")) or ZERO) - (
                to_decimal(v.get("credit_used")) or ZERO
            )
            total, spare, held = rows.get(code, (ZERO, ZERO, ZERO))
            rows[code] = (
                total + (to_decimal(v.get("balance")) or ZERO),
                spare + credit,
                held + (to_decimal(v.get("hold_trade")) or ZERO),
            )
        balances = {}
        for code, (total, credit, held) in rows.items():
            total = max(total, ZERO)
            held = min(max(held, ZERO), total)
            free = max(total + credit - held, ZERO)
            balances[code] = Balance(code, free=free, used=held, total=total)
        return balances


class PairCounters:
    """A client-side model of an exchange's per-pair trading counters.

    ``reserve`` charges an action to its pair *now* and says how long to wait before sending
    it, so concurrent callers on one pair queue up without holding a lock while they sleep.
    ``headroom`` is left free under the threshold: the exchange charges on arrival, a little
    later than the model does, and arrival times jitter.
    """

    def __init__(
        self, counter: TradingCounter | None, headroom: float, clock: Callable[[], float]
    ) -> None:
        self.counter = counter
        self._headroom = max(0.0, headroom)
        self._clock = clock
        self._states: dict[str, CounterState] = {}
        self._admitted: dict[str, tuple[float, float]] = {}  # symbol → (cost, reserved at)

    def reserve(self, symbol: str, cost: float) -> float:
        """Charge ``cost`` to ``symbol``'s counter; the seconds to wait before acting."""
        return self._reserve(symbol, cost, commit=True)

    def admit(self, symbol: str, cost: float) -> float:
        """``reserve``, and hold the charge for the pair's next :meth:`placement`."""
        delay = self._reserve(symbol, cost, commit=True)
        if self.counter is not None and cost > 0:
            self._admitted[symbol] = (cost, self._clock() + delay)
        return delay

    def placement(self, symbol: str, cost: float, *, commit: bool) -> float:
        """The seconds to wait before placing ``cost`` orders on ``symbol``; ``commit`` charges
        them (else nothing changes: a look ahead).

        What :meth:`admit` reserved for the pair is spent first; only the rest is charged
        anew, plus what the admitted charge has decayed since its moment (the orders reach the
        exchange now, not then). An admission serves one placement: what it leaves is
        dropped (the model then errs high, never low)."""
        now = self._clock()
        held, at = self._admitted.get(symbol, (0.0, now))
        used = min(held, cost)
        if commit:
            self._admitted.pop(symbol, None)
        decayed = 0.0 if self.counter is None else self.counter.decay * max(0.0, now - at)
        wait = self._reserve(symbol, cost - used + min(used, decayed), commit=commit)
        return max(wait, at - now if used > 0 else 0.0)

    def _reserve(self, symbol: str, cost: float, *, commit: bool) -> float:
        if self.counter is None or cost <= 0:
            return 0.0
        now = self._clock()
        state = self._states.get(symbol, CounterState(0.0, now))
        start = max(now, state.at)
        room = min(cost + self._headroom, self.counter.threshold)
        at = start + self.counter.wait(state, start, room)
        if commit:
            self._states[symbol] = CounterState(self.counter.current(state, at) + cost, at)
        return at - now

    def charge(self, symbol: str, extra: float) -> None:
        """Add ``extra`` to the counter without waiting (a cost learnt after the fact)."""
        if self.counter is None or extra <= 0:
            return
        state = self._states.get(symbol, CounterState(0.0, self._clock()))
        at = max(self._clock(), state.at)
        self._states[symbol] = CounterState(self.counter.current(state, at) + extra, at)


# -- construction -------------------------------------------------------------------------


def _client(
    exchange_id: str,
    api_key: str | None,
    api_secret: str | None,
    base_url: str | None,
    timeout: float,
    rate_limit_ms: float | None,
    ccxt_pacing: bool = True,
) -> Any:
    """The ccxt client; raises ValueError for an exchange ccxt does not know. ``ccxt_pacing``
    False: ccxt's own limiter is off (the adapter models Kraken's REST counter instead)."""
    cls = KrakenClient if exchange_id == "kraken" else getattr(ccxt_async, exchange_id, None)
    if cls is None or not isinstance(cls, type):
        raise ValueError(f"ccxt has no exchange {exchange_id!r}")
    config: dict[str, Any] = {"enableRateLimit": ccxt_pacing, "timeout": int(timeout * 1000)}
    if api_key:
        config["apiKey"] = api_key
    if api_secret:
        config["secret"] = api_secret
    if rate_limit_ms is not None:
        config["rateLimit"] = rate_limit_ms
    client = cls(config)
    client.logger = _WIRE
    if base_url:
        root = base_url.rstrip("/")
        if root.startswith("http://"):
            client.timeout_on_exit = 0  # ccxt lingers 250 ms on close for TLS shutdowns
        api = client.urls.get("api")
        client.urls["api"] = (
            {k: root if isinstance(v, str) else v for k, v in api.items()}
            if isinstance(api, dict)
            else root
        )
    return client


class _WireFilter(logging.Filter):
    """ccxt's debug lines print request headers (the API key): drop them, scrub the rest."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.INFO:
            return False
        record.msg = safe_text(record.getMessage())
        record.args = None
        return True


def _install_wire_filter() -> None:
    if not any(isinstance(f, _WireFilter) for f in _WIRE.filters):
        _WIRE.addFilter(_WireFilter())


# -- checks and conversions ---------------------------------------------------------------


def _local_refusal(o: OrderRequest, market: Market | None) -> MmopsError | None:
    """What the exchange would refuse anyway, checked before sending.

    On Kraken a validation error refuses the *whole* batch, so one order off the grid or
    below the minimum must not travel with fourteen good ones.
    """
    if market is None:
        return ExchangeRejected(f"unknown pair {o.symbol}")
    if not market.status.admits_limit(o.post_only):
        return ExchangeRejected(f"{o.symbol} is in {market.status.value} mode: order not admitted")
    rule = broken_rule(o, market)
    if rule is MarketRule.TICK_AND_LOT:
        return ExchangeRejected(
            f"{o.symbol}: price {o.price} or amount {o.amount} is off the tick {market.tick} "
            f"or lot {market.lot}"
        )
    if rule is MarketRule.MINIMUM:
        return MinimumNotMet(
            f"{o.symbol}: {o.amount} @ {o.price} is below the minimum "
            f"({market.min_amount} or cost {market.min_cost})"
        )
    return None


def _request_of(order: ExchangeOrder) -> OrderRequest:
    """The order as a request, to check an amended price against the market's rules."""
    cid = order.client_order_id or order.id
    return OrderRequest(order.symbol, order.side, order.amount, order.price, cid)


def _params(r: OrderRequest, fee_in_quote: bool) -> dict[str, Any]:
    """ccxt's order params. ``fee_in_quote`` (Kraken) pins ``oflags=fciq``: "fcib: prefer fee
    in base currency (default if selling)" (https://docs.kraken.com/api-reference/trading/
    add-order, ``oflags``), and mmops prices a take-profit's break-even with fees in quote.
    ccxt joins it with ``post`` (``oflags=fciq,post``)."""
    params: dict[str, Any] = {"postOnly": r.post_only, "clientOrderId": r.client_order_id}
    if fee_in_quote:
        params["oflags"] = FEE_IN_QUOTE
    return params


def _deadline_param(requests: Sequence[OrderRequest]) -> dict[str, str]:
    """Kraken's ``deadline`` for a request carrying ``requests``: the earliest of theirs.

    AddOrderBatch takes one deadline for the whole request (a top-level parameter: ccxt passes
    ``create_orders``' own params there and drops unknown per-order ones), so a batch is held
    to its strictest order. Empty when no order has a deadline.
    """
    deadlines = [r.deadline for r in requests if r.deadline is not None]
    return {"deadline": rfc3339(min(deadlines))} if deadlines else {}


def rfc3339(moment: datetime) -> str:
    """``moment`` as Kraken's RFC3339 deadline, e.g. ``2026-11-26T06:30:15.123Z``: UTC, cut
    (not rounded) to the millisecond, so the deadline sent is never later than the one asked."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _kraken_trade(txid: str, t: Any, order: ExchangeOrder) -> Trade:
    """A QueryTrades entry (TradesHistory's shape) of ``order`` as a Trade, by its txid."""
    try:
        return Trade(
            id=txid,
            order_id=order.id,
            symbol=order.symbol,
            side=Side(t["type"]),
            price=Decimal(str(t["price"])),
            amount=Decimal(str(t["vol"])),
            fee=Decimal(str(t.get("fee") or 0)),
            timestamp=datetime.fromtimestamp(float(t["time"]), UTC),
            client_order_id=order.client_order_id,
        )
    except (KeyError, TypeError, ValueError, ArithmeticError) as e:
        raise ExchangeUnavailable(f"trade {txid} of {order.id} unreadable: {e}") from e


def _ccxt_trade(t: Any, order: ExchangeOrder) -> Trade:
    """A ccxt trade structure of ``order`` as a Trade (fee taken as quote currency)."""
    try:
        fee = as_dict(t.get("fee")).get("cost")
        return Trade(
            id=str(t["id"]),
            order_id=order.id,
            symbol=order.symbol,
            side=Side(t.get("side") or order.side),
            price=Decimal(str(t["price"])),
            amount=Decimal(str(t["amount"])),
            fee=Decimal(str(fee or 0)),
            timestamp=datetime.fromtimestamp(float(t["timestamp"]) / 1000, UTC),
            client_order_id=order.client_order_id,
        )
    except (KeyError, TypeError, ValueError, ArithmeticError) as e:
        raise ExchangeUnavailable(f"a trade of {order.id} unreadable: {e}") from e
