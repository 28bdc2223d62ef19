"""The paper exchange: a real venue whose state lives in Redis.

Separate processes (the trading loop, ``settle``, ``serve``) that open the same venue id share
one venue. Every change is a WATCH/MULTI transaction computed with ``Decimal`` in Python, so two
processes never double-spend a balance or double-fill an order: a concurrent change makes
the transaction retry on fresh state.

Like Kraken: post-only orders that would take are rejected; balances hold what open orders
reserve (a sell holds its base, a buy its cost plus the maker fee); each pair has a trading
counter (:mod:`mmops.domain.ratelimit`), charged for refused orders too; a client order id is
unique among open orders only (``client_ids="open"``: a filled or cancelled order frees its id;
``"ever"`` accepts an id once for good); an order whose ``deadline`` has passed when it reaches
the venue, or lies outside Kraken's deadline window, is refused. Resting orders fill when the
seeded price path crosses them (:meth:`PaperExchange.match`), sometimes in parts.

Kraken as reported (sources in tests/kraken_server.py): a post-only order that would cross is
accepted and at once cancelled by the engine (``post_only_cross="cancel"``, the default;
``"reject"`` refuses it instead); a cancel may be left pending (``cancel_pending=True``): the
order stays open, holding and fillable, until :meth:`PaperExchange.settle_cancels`;
:meth:`PaperExchange.amend` moves a resting sell's price in place (same id and client id).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal, TypeVar, cast

import redis.exceptions as rex

from mmops.adapters.paper.catalog import CATALOG, Listing
from mmops.adapters.paper.faults import FaultPlan
from mmops.adapters.paper.matching import match_orders
from mmops.adapters.paper.prices import PricePath, Quote
from mmops.adapters.paper.state import Holding, PaperOrder, VenueKeys, decode_trade, encode_trade
from mmops.adapters.redis.client import Redis, redis_errors
from mmops.domain.exchange import (
    DeadlineFault,
    ExchangeOrder,
    MarketRule,
    OrderRequest,
    PlacementResult,
    Trade,
    broken_rule,
    check_batch,
    deadline_fault,
)
from mmops.domain.models import Balance, Market, OrderStatus, PairStatus, Side, Ticker
from mmops.domain.ratelimit import CounterState, TradingCounter, cancel_penalty
from mmops.errors import (
    DeadlineRefused,
    ExchangeRejected,
    ExchangeTimeout,
    ExchangeUnavailable,
    InsufficientFunds,
    MinimumNotMet,
    MmopsError,
    OrderNotFound,
    PostOnlyWouldTake,
    RateLimited,
)
from mmops.ports import Clock

T = TypeVar("T")
Pipe = Any  # redis.asyncio.client.Pipeline in immediate (WATCH) mode
MAX_TRANSACTION_RETRIES = 50
ClientIds = Literal["open", "ever"]
PostOnlyCross = Literal["cancel", "reject"]
# Kraken's words for a deadline refusal (see tests/kraken_server.py for the sources).
DEADLINE_REFUSALS = {
    DeadlineFault.ELAPSED: "EService:Deadline elapsed",
    DeadlineFault.WINDOW: "EGeneral:Invalid arguments:deadline",
}


class PaperExchange:
    """A paper venue; ``venue`` names its state in Redis (one venue per id).

    ``client_ids`` is how long a client order id stays taken: ``"open"`` while an order with
    it is open, as on Kraken; ``"ever"`` once accepted, for good.
    """

    name = "paper"

    def __init__(
        self,
        redis: Redis,
        clock: Clock,
        venue: str = "default",
        seed: int = 7,
        counter: TradingCounter | None = None,
        faults: FaultPlan | None = None,
        listings: Sequence[Listing] = CATALOG,
        volatility: float = 0.012,
        price_origin: float = 0.0,
        client_ids: ClientIds = "open",
        post_only_cross: PostOnlyCross = "cancel",
        cancel_pending: bool = False,
    ) -> None:
        if client_ids not in ("open", "ever"):
            raise ValueError(f"client_ids is 'open' or 'ever', got {client_ids!r}")
        if post_only_cross not in ("cancel", "reject"):
            raise ValueError(f"post_only_cross is 'cancel' or 'reject', got {post_only_cross!r}")
        self.post_only_cross = post_only_cross
        self.cancel_pending = cancel_pending
        self.amends = True  # False: a venue without amend (callers cancel and replace)
        self._r = redis
        self.client_ids = client_ids
        self._clock = clock
        self.venue = venue
        self.account = f"paper:{venue}"  # the one account of the venue (balance ledger)
        self.keys = VenueKeys(venue)
        self._cancelling = self.keys.cancelling  # ids whose cancel is pending
        self.prices = PricePath(seed, volatility, price_origin)
        self.counter = counter or TradingCounter()
        self.faults = faults or FaultPlan()
        self._listings = {listing.market.symbol: listing for listing in listings}
        self._calls = 0
        self._placements = 0
        self._orders_seen = 0

    # -- the Exchange port ----------------------------------------------------------------

    async def markets(self) -> dict[str, Market]:
        """The catalog's pairs, each with its current mode (:meth:`set_pair_status`)."""
        await self._call()
        modes = await self._pair_statuses()
        return {
            symbol: replace(listing.market, status=modes.get(symbol, PairStatus.ONLINE))
            for symbol, listing in self._listings.items()
        }

    @redis_errors
    async def tickers(self, symbols: Sequence[str]) -> dict[str, Ticker]:
        await self._call()
        now = self._clock.now()
        symbols_listed = list(self._listings)
        down, *values = await self._r.mget(
            [self.keys.down, *[self.keys.adjust(s) for s in symbols_listed]]
        )
        if down:
            raise ExchangeUnavailable("paper venue is down (its down switch is on)")
        adjust = {s: Decimal(str(v)) for s, v in zip(symbols_listed, values, strict=True) if v}
        result = {}
        for symbol in symbols:
            q = self._quote(symbol, now.timestamp(), adjust)
            result[symbol] = Ticker(symbol, q.bid, q.ask, now, last=q.mid)
        return result

    @redis_errors
    async def balances(self) -> dict[str, Balance]:
        await self._call()
        assets = sorted(cast(set[str], await self._r.smembers(self.keys.assets)))
        keys = [self.keys.balance(a) for a in assets]
        values = cast(list[str | None], await self._r.mget(keys) if keys else [])
        result = {}
        for asset, value in zip(assets, values, strict=True):
            h = Holding.decode(value)
            result[asset] = Balance(asset, free=h.free, used=h.used, total=h.total)
        return result

    async def admit(self, symbol: str, orders: int) -> None:
        """At once: the paper venue keeps its counter itself and refuses a batch that would
        lift it past the threshold (``RateLimited``), as Kraken does with a client that does
        not model it. Waiting here would be wrong besides: the counter decays on the venue's
        clock, which a demo moves by simulation, so a real sleep would wait for nothing."""

    @redis_errors
    async def place_batch(self, orders: Sequence[OrderRequest]) -> list[PlacementResult]:
        check_batch(orders)
        await self._call()
        if not orders:
            return []
        self._placements += 1
        placement = self._placements
        first_number = self._orders_seen + 1
        self._orders_seen += len(orders)
        symbol = orders[0].symbol
        listing = self._listing(symbol)
        if (refused := await self._whole_refusals(symbol, orders)) is not None:
            return refused
        ids = await self._order_ids(symbol, len(orders))

        async def place(pipe: Pipe) -> list[PlacementResult]:
            now = self._clock.now()
            adjust, rate, *values = await _mget(
                pipe,
                [self.keys.adjust(symbol), self.keys.rate(symbol)]
                + [self.keys.balance(a) for a in assets],
            )
            multiplier = {symbol: Decimal(adjust)} if adjust else {}
            quote = self._quote(symbol, now.timestamp(), multiplier)
            admitted = self.counter.admit(_counter(rate), now.timestamp(), len(orders))
            if admitted is None:
                limited = RateLimited(f"EOrder:Rate limit exceeded ({symbol})")
                return [PlacementResult(o, error=limited) for o in orders]
            holdings = {a: Holding.decode(v) for a, v in zip(assets, values, strict=True)}
            before = dict(holdings)
            cids = [o.client_order_id for o in orders]
            taken = dict(zip(cids, await self._taken(pipe, symbol, cids), strict=True))
            results, accepted = [], []
            for i, request in enumerate(orders):
                holder = taken[request.client_order_id]
                error = self._refusal(request, listing.market, quote, holdings, holder, now)
                error = error or self.faults.rejection(first_number + i, "order refused")
                if error is None:
                    paper = _new_order(ids[i], request, listing.market, now)
                    holdings = _hold(holdings, listing.market, paper)
                    accepted.append(paper)
                    taken[request.client_order_id] = paper.order.id  # open: a twin is refused
                results.append(
                    PlacementResult(
                        request, order=paper.order if error is None else None, error=error
                    )
                )
            results, voided = self._engine_cancels(results, ids, listing.market, now)
            pipe.multi()
            pipe.set(self.keys.rate(symbol), _encode_counter(admitted))
            self._write_orders(pipe, symbol, accepted + voided)
            for asset, holding in holdings.items():
                if holding != before[asset]:
                    pipe.set(self.keys.balance(asset), holding.encode())
            return results

        assets = sorted({_held_asset(o.side, listing.market) for o in orders})
        watched = [self.keys.clients(symbol), self.keys.rate(symbol)]
        results = await self._transact(watched + [self.keys.balance(a) for a in assets], place)
        if placement in self.faults.timeout_after_accept:
            timeout = ExchangeTimeout("no answer from the paper venue (injected fault)")
            return [PlacementResult(r.request, error=timeout) if r.placed else r for r in results]
        return results

    async def _taken(self, pipe: Pipe, symbol: str, client_ids: list[str]) -> list[str | None]:
        """Per client id, the order that still holds it (None: the id is free).

        ``clients`` maps an id to the latest order accepted with it; with ``"open"`` that
        order holds the id only while it is open. An order closing concurrently at worst
        makes this refuse an id a moment longer, as the same race does on Kraken.
        """
        known = cast(list[str | None], await pipe.hmget(self.keys.clients(symbol), client_ids))
        if self.client_ids == "ever" or not any(known):
            return known
        ids = [k for k in known if k is not None]
        is_open = dict(zip(ids, await pipe.smismember(self.keys.open, ids), strict=True))
        return [k if k is not None and is_open[k] else None for k in known]

    def _write_orders(self, pipe: Pipe, symbol: str, papers: list[PaperOrder]) -> None:
        """Orders the venue accepted: recorded and holding their client ids; the open ones
        resting (an order the engine cancelled at once is known, closed, holding nothing)."""
        if not papers:
            return
        pipe.hset(self.keys.orders, mapping={p.order.id: p.encode() for p in papers})
        if resting := [p.order.id for p in papers if p.order.status is OrderStatus.OPEN]:
            pipe.sadd(self.keys.open, *resting)
        clients = {cast(str, p.order.client_order_id): p.order.id for p in papers}
        pipe.hset(self.keys.clients(symbol), mapping=clients)

    def _engine_cancels(
        self, results: list[PlacementResult], ids: list[str], market: Market, now: datetime
    ) -> tuple[list[PlacementResult], list[PaperOrder]]:
        """With ``post_only_cross="cancel"``, a post-only refusal becomes an order accepted and
        at once cancelled by the engine ("Post only order"): it has an id, rests nowhere."""
        if self.post_only_cross != "cancel":
            return results, []
        out, voided = [], []
        for order_id, r in zip(ids, results, strict=True):
            if isinstance(r.error, PostOnlyWouldTake):
                order = _new_order(order_id, r.request, market, now).order
                voided.append(PaperOrder(replace(order, status=OrderStatus.CANCELED), Decimal(0)))
                r = PlacementResult(r.request, order=voided[-1].order)
            out.append(r)
        return out, voided

    @redis_errors
    async def cancel(self, symbol: str, order_id: str) -> ExchangeOrder:
        """Cancel an open order; with ``cancel_pending`` the cancel is only noted and the
        order returned still OPEN (see :meth:`settle_cancels`)."""
        await self._call()
        if self.cancel_pending:
            order = (await self._read_order(self._r, order_id, symbol)).order
            if order.status is not OrderStatus.OPEN:
                raise OrderNotFound(f"order {order_id} is {order.status.value}, not open")
            await self._r.sadd(self._cancelling, order_id)
            return order
        return await self._cancel_now(symbol, order_id)

    @redis_errors
    async def settle_cancels(self) -> int:
        """The engine completes the pending cancels of orders still open; returns how many
        (an order that filled meanwhile stays filled)."""
        ids = sorted(cast(set[str], await self._r.smembers(self._cancelling)))
        done = 0
        for order_id in ids:
            paper = await self._read_order(self._r, order_id, None)
            try:
                await self._cancel_now(paper.order.symbol, order_id)
                done += 1
            except OrderNotFound:
                pass
            await self._r.srem(self._cancelling, order_id)
        return done

    @redis_errors
    async def amend(self, symbol: str, order_id: str, price: Decimal) -> ExchangeOrder:
        """Move a resting sell to ``price`` in place (Kraken's AmendOrder): same id and client
        id, the same quantity held. Raises OrderNotFound if it is not open (or its cancel is
        pending), PostOnlyWouldTake if it would cross, ExchangeRejected off the tick's grid
        or for a buy (the paper venue amends sells only)."""
        await self._call()
        market = self._listing(symbol).market
        if not self.amends:
            raise ExchangeRejected("paper venue: amend is switched off")

        async def amend(pipe: Pipe) -> ExchangeOrder:
            paper = await self._read_order(pipe, order_id, symbol)
            order = paper.order
            if order.status is not OrderStatus.OPEN or await pipe.sismember(
                self._cancelling, order_id
            ):
                raise OrderNotFound(f"EOrder:Unknown order {order_id!r}")
            if order.side is not Side.SELL:
                raise ExchangeRejected("paper venue: only sells are amended")
            request = OrderRequest(symbol, order.side, order.amount, price, order_id)
            if broken_rule(request, market) is not None:
                raise ExchangeRejected("EGeneral:Invalid arguments:price")
            quote = self._quote(symbol, self._clock.now().timestamp(), await self._adjustments())
            if price <= quote.bid:
                raise PostOnlyWouldTake("EOrder:Post only order")
            amended = PaperOrder(replace(order, price=price), paper.hold)
            pipe.multi()
            pipe.hset(self.keys.orders, order_id, amended.encode())
            return amended.order

        return await self._transact([self.keys.orders, self._cancelling], amend)

    async def _cancel_now(self, symbol: str, order_id: str) -> ExchangeOrder:
        async def cancel(pipe: Pipe) -> ExchangeOrder:
            paper = await self._read_order(pipe, order_id, symbol)
            if paper.order.status is not OrderStatus.OPEN:
                raise OrderNotFound(f"order {order_id} is {paper.order.status.value}, not open")
            market = self._listing(symbol).market
            held_asset = _held_asset(paper.order.side, market)
            holding = Holding.decode(await pipe.get(self.keys.balance(held_asset)))
            now = self._clock.now()
            age = (now - paper.order.created_at).total_seconds()
            state = self.counter.current(
                _counter(await pipe.get(self.keys.rate(symbol))), now.timestamp()
            )
            penalised = CounterState(state + cancel_penalty(age), now.timestamp())
            canceled = PaperOrder(replace(paper.order, status=OrderStatus.CANCELED), Decimal(0))
            pipe.multi()
            pipe.hset(self.keys.orders, order_id, canceled.encode())
            pipe.srem(self.keys.open, order_id)
            released = Holding(holding.total, holding.used - paper.hold)
            pipe.set(self.keys.balance(held_asset), released.encode())
            pipe.set(self.keys.rate(symbol), _encode_counter(penalised))
            return canceled.order

        market = self._listing(symbol).market
        watched = [self.keys.orders, self.keys.rate(symbol)]
        watched += [self.keys.balance(market.base), self.keys.balance(market.quote)]
        return await self._transact(watched, cancel)

    @redis_errors
    async def fetch_order(self, symbol: str, order_id: str) -> ExchangeOrder:
        await self._call()
        return (await self._read_order(self._r, order_id, symbol)).order

    @redis_errors
    async def open_orders(self, symbol: str | None = None) -> list[ExchangeOrder]:
        await self._call()
        ids = sorted(cast(set[str], await self._r.smembers(self.keys.open)))
        if not ids:
            return []
        raws = await self._r.hmget(self.keys.orders, ids)
        orders = [PaperOrder.decode(str(raw)).order for raw in raws if raw]
        return [o for o in orders if symbol is None or o.symbol == symbol]

    @redis_errors
    async def fetch_orders(self, order_ids: Sequence[str]) -> dict[str, ExchangeOrder]:
        """Orders of any pair and state by id, one call; unknown ids are left out."""
        await self._call()
        if not order_ids:
            return {}
        raws = await self._r.hmget(self.keys.orders, list(order_ids))
        orders = [PaperOrder.decode(str(raw)).order for raw in raws if raw]
        return {o.id: o for o in orders}

    @redis_errors
    async def order_trades(self, symbol: str, order_id: str) -> list[Trade]:
        """The order's executions from the venue's trade list (the ids ``trades`` gives)."""
        await self._read_order(self._r, order_id, symbol)  # OrderNotFound
        await self._call()
        raws = cast(list[str], await self._r.lrange(self.keys.trades, 0, -1))
        # Only entries that name the order are decoded (the exact JSON key and value).
        needle = f'"order_id":{json.dumps(order_id)}'
        trades = [decode_trade(raw) for raw in raws if needle in raw]
        return [t for t in trades if t.order_id == order_id]

    @redis_errors
    async def find_by_client_id(self, symbol: str, client_order_id: str) -> ExchangeOrder | None:
        """The open order with this client id, else the most recent closed one, or None.

        ``clients`` keeps the latest order accepted with the id, and that is the one: an id
        is accepted again only once no open order holds it, and closed orders stay closed.
        """
        await self._call()
        order_id = await self._r.hget(self.keys.clients(symbol), client_order_id)
        if order_id is None:
            return None
        order = (await self._read_order(self._r, str(order_id), None)).order
        return order if order.symbol == symbol else None

    async def close(self) -> None:
        """Nothing to release: the Redis client belongs to whoever built this venue."""

    async def __aenter__(self) -> PaperExchange:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    # -- venue controls (paper only) ------------------------------------------------------

    @redis_errors
    async def fund(self, asset: str, amount: Decimal) -> None:
        """Add ``amount`` of ``asset`` to the account (negative to withdraw free balance)."""

        async def fund(pipe: Pipe) -> None:
            h = Holding.decode(await pipe.get(self.keys.balance(asset)))
            if h.free + amount < 0:
                raise InsufficientFunds(f"cannot withdraw {-amount} {asset}: free {h.free}")
            pipe.multi()
            pipe.set(self.keys.balance(asset), Holding(h.total + amount, h.used).encode())
            pipe.sadd(self.keys.assets, asset)

        await self._transact([self.keys.balance(asset)], fund)

    @redis_errors
    async def set_down(self, down: bool) -> None:
        """Take the venue down for every process using it, or bring it back: while down,
        ``tickers`` fails with ExchangeUnavailable, so settlement runs fail."""
        if down:
            await self._r.set(self.keys.down, "1")
        else:
            await self._r.delete(self.keys.down)

    @redis_errors
    async def set_pair_status(self, symbol: str, status: PairStatus) -> None:
        """Put a pair in one of Kraken's modes (``online`` to lift it): a ``cancel_only`` or
        ``reduce_only`` pair takes no new order, a ``post_only`` pair only post-only ones."""
        self._listing(symbol)
        if status is PairStatus.ONLINE:
            await self._r.hdel(self.keys.status, symbol)
        else:
            await self._r.hset(self.keys.status, symbol, status.value)

    async def _whole_refusals(
        self, symbol: str, orders: Sequence[OrderRequest]
    ) -> list[PlacementResult] | None:
        """The whole request refused if the pair's mode does not admit one of its orders.

        Raises ExchangeUnavailable for a pair of ``faults.fail_symbols``."""
        if symbol in self.faults.fail_symbols:
            raise ExchangeUnavailable(f"paper venue: {symbol} unavailable (injected fault)")
        mode = (await self._pair_statuses()).get(symbol, PairStatus.ONLINE)
        if all(mode.admits_limit(o.post_only) for o in orders):
            return None
        refused = ExchangeRejected(f"EService:Market in {mode.value} mode ({symbol})")
        return [PlacementResult(o, error=refused) for o in orders]

    async def _pair_statuses(self) -> dict[str, PairStatus]:
        raw = await self._r.hgetall(self.keys.status)
        return {str(k): PairStatus(str(v)) for k, v in raw.items()}

    @redis_errors
    async def shock(self, symbol: str, multiplier: Decimal) -> None:
        """Multiply the pair's price path by ``multiplier`` from now on (1 undoes it)."""
        self._listing(symbol)
        if not multiplier.is_finite() or multiplier <= 0:
            raise ValueError(f"a price multiplier must be positive, got {multiplier}")
        await self._r.set(self.keys.adjust(symbol), str(multiplier))

    @redis_errors
    async def match(self, until: datetime | None = None, step_seconds: float = 10.0) -> list[Trade]:
        """Fill resting orders the price path crossed since the last match, up to ``until``.

        Returns the new trades. The first call only starts the venue's match clock.
        """
        end = (until or self._clock.now()).timestamp()

        async def run(pipe: Pipe) -> list[Trade]:
            start_raw = await pipe.get(self.keys.matched_at)
            if start_raw is None:
                pipe.multi()
                pipe.set(self.keys.matched_at, repr(end))
                return []
            start = float(start_raw)
            if end <= start:
                return []
            open_ids = sorted(cast(set[str], await pipe.smembers(self.keys.open)))
            raws = await pipe.hmget(self.keys.orders, open_ids) if open_ids else []
            orders = [PaperOrder.decode(raw) for raw in raws if raw]
            assets = sorted(cast(set[str], await self._r.smembers(self.keys.assets)))
            assets = sorted(set(assets) | {a for m in self._markets() for a in (m.base, m.quote)})
            await pipe.watch(*[self.keys.balance(a) for a in assets])
            values = await _mget(pipe, [self.keys.balance(a) for a in assets])
            holdings = {a: Holding.decode(v) for a, v in zip(assets, values, strict=True)}
            adjust = await self._adjustments(pipe)
            outcome = match_orders(
                orders,
                holdings,
                {s: listing.market for s, listing in self._listings.items()},
                lambda symbol, t: self._quote(symbol, t, adjust),
                start,
                end,
                step_seconds,
                self.prices.origin,
            )
            trade_ids = await self._next_ids("T", len(outcome.trades)) if outcome.trades else []
            trades = [replace(t, id=trade_ids[i]) for i, t in enumerate(outcome.trades)]
            pipe.multi()
            pipe.set(self.keys.matched_at, repr(end))
            for paper in outcome.orders:
                pipe.hset(self.keys.orders, paper.order.id, paper.encode())
                if paper.order.status is not OrderStatus.OPEN:
                    pipe.srem(self.keys.open, paper.order.id)
            for asset, holding in outcome.holdings.items():
                pipe.set(self.keys.balance(asset), holding.encode())
                pipe.sadd(self.keys.assets, asset)
            if trades:
                pipe.rpush(self.keys.trades, *[encode_trade(t) for t in trades])
            return trades

        return await self._transact([self.keys.matched_at, self.keys.open, self.keys.orders], run)

    @redis_errors
    async def trades(self, start: int = 0) -> tuple[list[Trade], int]:
        """Trades from index ``start`` on, and the index to read from next time."""
        raws = cast(list[str], await self._r.lrange(self.keys.trades, start, -1))
        return [decode_trade(raw) for raw in raws], start + len(raws)

    @redis_errors
    async def trade_count(self) -> int:
        """How many trades the venue has made: the index the next one will have."""
        return int(await self._r.llen(self.keys.trades))

    @redis_errors
    async def reset(self) -> None:
        """Delete every key of this venue, by name: the fixed ones, a balance per asset it
        knows (its assets set and every listed asset) and the keys of every listed pair, in
        one DEL (all share the venue's tag, so one slot on a cluster)."""
        known = cast(set[str], await self._r.smembers(self.keys.assets))
        listings = [*CATALOG, *self._listings.values()]
        assets = known | {a for item in listings for a in (item.market.base, item.market.quote)}
        symbols = {item.market.symbol for item in listings}
        await self._r.delete(*self.keys.all(sorted(assets), sorted(symbols)))

    # -- internals ------------------------------------------------------------------------

    async def _call(self) -> None:
        self._calls += 1
        if self.faults.latency:
            await asyncio.sleep(self.faults.latency)
        if self._calls in self.faults.fail_calls:
            raise ExchangeUnavailable(
                f"paper venue unavailable (injected fault, call {self._calls})"
            )
        if self._calls in self.faults.throttle_calls:
            raise RateLimited(f"EService:Throttled (injected fault, call {self._calls})")

    async def _transact(self, watch: list[str], body: Callable[[Pipe], Awaitable[T]]) -> T:
        for _ in range(MAX_TRANSACTION_RETRIES):
            async with self._r.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(*watch)
                    result = await body(pipe)
                    if len(pipe):  # the body queued writes after MULTI
                        await pipe.execute()
                    return result
                except rex.WatchError:
                    continue
        raise ExchangeUnavailable("paper venue busy: too many concurrent changes, try again")

    async def _next_ids(self, prefix: str, count: int) -> list[str]:
        last = int(await self._r.incrby(self.keys.seq, count))
        return [f"{prefix}-{n:08d}" for n in range(last - count + 1, last + 1)]

    async def _order_ids(self, symbol: str, count: int) -> list[str]:
        """Ids for ``count`` new orders of ``symbol``, numbered per pair: a pair's ids depend
        on its own placements only, not on how concurrent placements on other pairs (one
        settlement run places every pair's batch at once) reach the venue, so one seed's run
        gets the same ids every time (the matching order and trade ids follow them)."""
        last = int(await self._r.incrby(self.keys.order_seq(symbol), count))
        pair = symbol.replace("/", "_")
        return [f"P-{pair}-{n:08d}" for n in range(last - count + 1, last + 1)]

    def _listing(self, symbol: str) -> Listing:
        listing = self._listings.get(symbol)
        if listing is None:
            raise ExchangeRejected(f"EQuery:Unknown asset pair {symbol!r}")
        return listing

    def _markets(self) -> list[Market]:
        return [listing.market for listing in self._listings.values()]

    def _quote(self, symbol: str, t: float, adjust: Mapping[str, Decimal]) -> Quote:
        market = self._listing(symbol).market
        return self.prices.quote(market, t, adjust.get(symbol, Decimal(1)))

    async def _adjustments(self, reader: Any = None) -> dict[str, Decimal]:
        symbols = list(self._listings)
        values = await _mget(reader or self._r, [self.keys.adjust(s) for s in symbols])
        return {s: Decimal(v) for s, v in zip(symbols, values, strict=True) if v}

    async def _read_order(self, reader: Any, order_id: str, symbol: str | None) -> PaperOrder:
        raw = await reader.hget(self.keys.orders, order_id)
        if raw is None:
            raise OrderNotFound(f"EOrder:Unknown order {order_id!r}")
        paper = PaperOrder.decode(raw)
        if symbol is not None and paper.order.symbol != symbol:
            raise OrderNotFound(f"EOrder:Unknown order {order_id!r} for {symbol}")
        return paper

    def _refusal(
        self,
        o: OrderRequest,
        market: Market,
        quote: Quote,
        holdings: Mapping[str, Holding],
        known_client_id: str | None,
        now: datetime,
    ) -> MmopsError | None:
        """Why the venue refuses this order now, or None if it accepts it."""
        fault = deadline_fault(o.deadline, now)
        if fault is not None:
            return DeadlineRefused(DEADLINE_REFUSALS[fault])
        if known_client_id is not None:
            return ExchangeRejected(f"EOrder:Duplicate client order id {o.client_order_id}")
        rule = broken_rule(o, market)
        if rule is MarketRule.TICK_AND_LOT:
            return ExchangeRejected("EGeneral:Invalid arguments:price or volume precision")
        if rule is MarketRule.MINIMUM:
            return MinimumNotMet("EOrder:Order minimum not met")
        if o.post_only and (
            (o.side is Side.SELL and o.price <= quote.bid)
            or (o.side is Side.BUY and o.price >= quote.ask)
        ):
            return PostOnlyWouldTake("EOrder:Post only order")
        asset, need = _hold_need(o.side, o.price, o.amount, market)
        if holdings[asset].free < need:
            return InsufficientFunds("EOrder:Insufficient funds")
        return None


async def _mget(reader: Any, names: list[str]) -> list[Any]:
    """MGET of keys of the venue's tag, on the client or on a transaction's pipeline in its
    WATCH phase. Sent as a raw command: redis-py's cluster pipeline refuses its ``mget``
    method (keys of several slots cannot be batched), but in the WATCH phase the command runs
    at once on the connection of the venue's one slot, as on a single server."""
    return cast(list[Any], await reader.execute_command("MGET", *names))


def _held_asset(side: Side, market: Market) -> str:
    return market.base if side is Side.SELL else market.quote


def _hold_need(side: Side, price: Decimal, amount: Decimal, market: Market) -> tuple[str, Decimal]:
    """The asset and amount an order reserves: base for a sell, cost plus maker fee for a buy."""
    if side is Side.SELL:
        return market.base, amount
    return market.quote, price * amount * (1 + market.maker_fee)


def _new_order(order_id: str, o: OrderRequest, market: Market, now: datetime) -> PaperOrder:
    _, hold = _hold_need(o.side, o.price, o.amount, market)
    order = ExchangeOrder(
        id=order_id,
        symbol=o.symbol,
        side=o.side,
        price=o.price,
        amount=o.amount,
        status=OrderStatus.OPEN,
        created_at=now,
        client_order_id=o.client_order_id,
    )
    return PaperOrder(order, hold)


def _hold(holdings: Mapping[str, Holding], market: Market, paper: PaperOrder) -> dict[str, Holding]:
    asset = market.base if paper.order.side is Side.SELL else market.quote
    h = holdings[asset]
    return {**holdings, asset: Holding(h.total, h.used + paper.hold)}


def _counter(raw: str | None) -> CounterState:
    if not raw:
        return CounterState()
    value, at = raw.split("|")
    return CounterState(float(value), float(at))


def _encode_counter(state: CounterState) -> str:
    return f"{state.value!r}|{state.at!r}"
