"""The paper exchange: a real venue whose state lives in Redis.

Separate processes (the trading loop, ``settle``, ``serve``) that open the same venue id share
one venue. Every change is computed with ``Decimal`` in Python and written atomically only if
what it was computed from is unchanged, so two processes never double-spend a balance or
double-fill an order: a concurrent change makes it recompute on fresh state. Placements,
amends, cancels and funding are one compare-and-set Lua call each (:mod:`.guarded`, usually one
round trip); matching is a WATCH/MULTI transaction.

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
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal, TypeVar, cast

import redis.exceptions as rex

from mmops.adapters.paper import reads
from mmops.adapters.paper.catalog import CATALOG, Listing
from mmops.adapters.paper.faults import FaultPlan
from mmops.adapters.paper.guarded import Guard, Read, Values, Write
from mmops.adapters.paper.matching import match_orders, sample_times
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
WINDOWS_KEPT = 10_000  # matches a fill-path reader may fall behind by and still find
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
        self._guard = Guard(redis)
        self._open_orders = redis.register_script(reads.OPEN_ORDERS)
        self._balances = redis.register_script(reads.BALANCES)
        self._by_client_id = redis.register_script(reads.BY_CLIENT_ID)
        self._calls = 0
        self._placements = 0
        self._orders_seen = 0

    # -- the Exchange port ----------------------------------------------------------------

    async def markets(self) -> dict[str, Market]:
        """The catalog's pairs, each with its current mode (:meth:`set_pair_status`)."""
        await self._call()
        raw = cast(dict[str, str], await self._r.hgetall(self.keys.status))
        status = self.keys.status
        self._guard.note({Read("hget", status, s): raw.get(s, "") for s in self._listings})
        modes = {symbol: PairStatus(value) for symbol, value in raw.items()}
        return {
            symbol: replace(listing.market, status=modes.get(symbol, PairStatus.ONLINE))
            for symbol, listing in self._listings.items()
        }

    @redis_errors
    async def tickers(self, symbols: Sequence[str]) -> dict[str, Ticker]:
        await self._call()
        now = self._clock.now()
        symbols_listed = list(self._listings)
        names = [self.keys.adjust(s) for s in symbols_listed]
        down, *values = cast(list[str | None], await self._r.mget([self.keys.down, *names]))
        if down:
            raise ExchangeUnavailable("paper venue is down (its down switch is on)")
        self._guard.note({Read("get", n): v or "" for n, v in zip(names, values, strict=True)})
        adjust = {s: Decimal(v) for s, v in zip(symbols_listed, values, strict=True) if v}
        result = {}
        for symbol in symbols:
            q = self._quote(symbol, now.timestamp(), adjust)
            result[symbol] = Ticker(symbol, q.bid, q.ask, now, last=q.mid)
        return result

    @redis_errors
    async def balances(self) -> dict[str, Balance]:
        await self._call()
        listed = sorted({a for m in self._markets() for a in (m.base, m.quote)})
        names = [self.keys.balance(a) for a in listed]
        members, values = await self._balances(keys=[self.keys.assets, *names])
        seen = dict(zip(listed, cast(list[str | None], values), strict=True))
        assets = sorted(cast(list[str], members))
        if others := [a for a in assets if a not in seen]:  # funded, not listed here
            more = await _mget(self._r, [self.keys.balance(a) for a in others])
            seen.update(zip(others, more, strict=True))
        self._guard.note({Read("get", self.keys.balance(a)): v or "" for a, v in seen.items()})
        result = {}
        for asset in assets:
            h = Holding.decode(seen[asset])
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
        market = self._listing(symbol).market
        if symbol in self.faults.fail_symbols:
            raise ExchangeUnavailable(f"paper venue: {symbol} unavailable (injected fault)")
        k = self.keys
        assets = sorted({_held_asset(o.side, market) for o in orders})
        reads = [Read("hget", k.status, symbol), Read("get", k.adjust(symbol))]
        reads += [Read("get", k.rate(symbol)), Read("get", k.order_seq(symbol))]
        reads += [Read("get", k.balance(a)) for a in assets]
        # The order holding each client id: ``clients`` maps an id to the latest order accepted
        # with it; with ``"open"`` that order holds the id only while it is open.
        via, clients = (k.open if self.client_ids == "open" else ""), k.clients(symbol)
        holders = [Read("held", clients, o.client_order_id, via) for o in orders]
        reads += holders

        def place(values: Values) -> tuple[list[PlacementResult], list[Write]]:
            return self._place(values, orders, holders, market, assets, first_number)

        results = await self._guard.run(reads, place)
        if placement in self.faults.timeout_after_accept:
            timeout = ExchangeTimeout("no answer from the paper venue (injected fault)")
            return [PlacementResult(r.request, error=timeout) if r.placed else r for r in results]
        return results

    def _place(
        self,
        values: Values,
        orders: Sequence[OrderRequest],
        holders: list[Read],
        market: Market,
        assets: list[str],
        first_number: int,
    ) -> tuple[list[PlacementResult], list[Write]]:
        """A batch's outcome from the values it depends on, and the writes that record it.

        The whole batch is refused if the pair's mode does not admit one of its orders; else
        it takes order ids (a refused order's too) and, unless the trading counter refuses
        it, each order is checked against the balances left by the orders before it."""
        k, symbol = self.keys, market.symbol
        status = values[Read("hget", k.status, symbol)]
        mode = PairStatus(status) if status else PairStatus.ONLINE
        if not all(mode.admits_limit(o.post_only) for o in orders):
            refused = ExchangeRejected(f"EService:Market in {mode.value} mode ({symbol})")
            return [PlacementResult(o, error=refused) for o in orders], []
        last = int(values[Read("get", k.order_seq(symbol))] or 0)
        ids = _order_ids(symbol, last, len(orders))
        writes = [Write("SET", k.order_seq(symbol), (str(last + len(orders)),))]
        now = self._clock.now()
        adjust = values[Read("get", k.adjust(symbol))]
        quote = self._quote(symbol, now.timestamp(), {symbol: Decimal(adjust)} if adjust else {})
        rate = values[Read("get", k.rate(symbol))]
        admitted = self.counter.admit(_counter(rate), now.timestamp(), len(orders))
        if admitted is None:
            limited = RateLimited(f"EOrder:Rate limit exceeded ({symbol})")
            return [PlacementResult(o, error=limited) for o in orders], writes
        holdings = {a: Holding.decode(values[Read("get", k.balance(a))]) for a in assets}
        before = dict(holdings)
        taken = {o.client_order_id: values[h] or None for o, h in zip(orders, holders, strict=True)}
        results, accepted = [], []
        for i, request in enumerate(orders):
            holder = taken[request.client_order_id]
            error = self._refusal(request, market, quote, holdings, holder, now)
            error = error or self.faults.rejection(first_number + i, "order refused")
            if error is None:
                paper = _new_order(ids[i], request, market, now)
                holdings = _hold(holdings, market, paper)
                accepted.append(paper)
                taken[request.client_order_id] = paper.order.id  # open: a twin is refused
            results.append(
                PlacementResult(request, order=paper.order if error is None else None, error=error)
            )
        results, voided = self._engine_cancels(results, ids, market, now)
        writes.append(Write("SET", k.rate(symbol), (_encode_counter(admitted),)))
        writes += self._order_writes(symbol, accepted + voided)
        writes += [
            Write("SET", k.balance(a), (h.encode(),)) for a, h in holdings.items() if h != before[a]
        ]
        return results, writes

    def _order_writes(self, symbol: str, papers: list[PaperOrder]) -> list[Write]:
        """Orders the venue accepted: recorded and holding their client ids; the open ones
        resting (an order the engine cancelled at once is known, closed, holding nothing)."""
        if not papers:
            return []
        records = tuple(x for p in papers for x in (p.order.id, p.encode()))
        writes = [Write("HSET", self.keys.orders, records)]
        if resting := tuple(p.order.id for p in papers if p.order.status is OrderStatus.OPEN):
            writes.append(Write("SADD", self.keys.open, resting))
        clients = tuple(x for p in papers for x in (cast(str, p.order.client_order_id), p.order.id))
        writes.append(Write("HSET", self.keys.clients(symbol), clients))
        return writes

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
            order = (await self._read_order(order_id, symbol)).order
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
            paper = await self._read_order(order_id, None)
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

        k = self.keys
        reads = [Read("hget", k.orders, order_id), Read("member", self._cancelling, order_id)]
        reads.append(Read("get", k.adjust(symbol)))

        def amend(values: Values) -> tuple[ExchangeOrder, list[Write]]:
            paper = _decode_order(values[reads[0]], order_id, symbol)
            order = paper.order
            if order.status is not OrderStatus.OPEN or values[reads[1]]:
                raise OrderNotFound(f"EOrder:Unknown order {order_id!r}")
            if order.side is not Side.SELL:
                raise ExchangeRejected("paper venue: only sells are amended")
            request = OrderRequest(symbol, order.side, order.amount, price, order_id)
            if broken_rule(request, market) is not None:
                raise ExchangeRejected("EGeneral:Invalid arguments:price")
            adjust = values[reads[2]]
            multiplier = {symbol: Decimal(adjust)} if adjust else {}
            quote = self._quote(symbol, self._clock.now().timestamp(), multiplier)
            if price <= quote.bid:
                raise PostOnlyWouldTake("EOrder:Post only order")
            amended = PaperOrder(replace(order, price=price), paper.hold)
            return amended.order, [Write("HSET", k.orders, (order_id, amended.encode()))]

        return await self._guard.run(reads, amend)

    async def _cancel_now(self, symbol: str, order_id: str) -> ExchangeOrder:
        k, market = self.keys, self._listing(symbol).market
        reads = [Read("hget", k.orders, order_id), Read("get", k.rate(symbol))]
        reads += [Read("get", k.balance(market.base)), Read("get", k.balance(market.quote))]

        def cancel(values: Values) -> tuple[ExchangeOrder, list[Write]]:
            paper = _decode_order(values[reads[0]], order_id, symbol)
            if paper.order.status is not OrderStatus.OPEN:
                raise OrderNotFound(f"order {order_id} is {paper.order.status.value}, not open")
            held = k.balance(_held_asset(paper.order.side, market))
            holding = Holding.decode(values[Read("get", held)])
            now = self._clock.now()
            age = (now - paper.order.created_at).total_seconds()
            state = self.counter.current(_counter(values[reads[1]]), now.timestamp())
            penalised = CounterState(state + cancel_penalty(age), now.timestamp())
            canceled = PaperOrder(replace(paper.order, status=OrderStatus.CANCELED), Decimal(0))
            released = Holding(holding.total, holding.used - paper.hold)
            return canceled.order, [
                Write("HSET", k.orders, (order_id, canceled.encode())),
                Write("SREM", k.open, (order_id,)),
                Write("SET", held, (released.encode(),)),
                Write("SET", k.rate(symbol), (_encode_counter(penalised),)),
            ]

        return await self._guard.run(reads, cancel)

    @redis_errors
    async def fetch_order(self, symbol: str, order_id: str) -> ExchangeOrder:
        await self._call()
        return (await self._read_order(order_id, symbol)).order

    @redis_errors
    async def open_orders(self, symbol: str | None = None) -> list[ExchangeOrder]:
        await self._call()
        raws = cast(list[str], await self._open_orders(keys=[self.keys.open, self.keys.orders]))
        orders = sorted((PaperOrder.decode(raw).order for raw in raws), key=lambda o: o.id)
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
        await self._read_order(order_id, symbol)  # OrderNotFound
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
        found = await self._by_client_id(
            keys=[self.keys.clients(symbol), self.keys.orders], args=[client_order_id]
        )
        if not found:
            return None
        order_id, raw = cast(list[str], found)
        order = _decode_order(raw, order_id, None).order
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

        key = self.keys.balance(asset)

        def fund(values: Values) -> tuple[None, list[Write]]:
            h = Holding.decode(values[Read("get", key)])
            if h.free + amount < 0:
                raise InsufficientFunds(f"cannot withdraw {-amount} {asset}: free {h.free}")
            funded = Holding(h.total + amount, h.used).encode()
            return None, [Write("SET", key, (funded,)), Write("SADD", self.keys.assets, (asset,))]

        await self._guard.run([Read("get", key)], fund)

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
            )
            trade_ids = await self._next_ids("T", len(outcome.trades)) if outcome.trades else []
            trades = [replace(t, id=trade_ids[i]) for i, t in enumerate(outcome.trades)]
            pipe.multi()
            pipe.set(self.keys.matched_at, repr(end))
            window = {"start": repr(start), "end": repr(end), "step": repr(step_seconds)}
            window |= {f"adjust:{s}": str(m) for s, m in adjust.items()}
            pipe.xadd(self.keys.windows, window, maxlen=WINDOWS_KEPT, approximate=True)
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
    async def path_cursor(self) -> str:
        """The id of the venue's last match window ('0' before any): where a reader of
        ``fill_path`` starting now begins."""
        last = cast(list[tuple[str, Any]], await self._r.xrevrange(self.keys.windows, count=1))
        return last[0][0] if last else "0"

    @redis_errors
    async def fill_path(self, symbols: Sequence[str], after: str) -> tuple[list[list[Ticker]], str]:
        """The quotes of ``symbols`` at each time the venue's matches since the window
        ``after`` looked at the price path (``sample_times``, with the shocks each match used),
        oldest first, and the id of the last window read: what a session records so its fills
        can be replayed. Every match counts, whoever called it. One round trip. Raises
        ExchangeRejected for a symbol the venue does not list."""
        for symbol in symbols:
            self._listing(symbol)
        start = "-" if after == "0" else "(" + after
        windows = cast(
            list[tuple[str, dict[str, str]]], await self._r.xrange(self.keys.windows, start, "+")
        )
        steps = []
        for _, w in windows:
            adjust = {k[7:]: Decimal(v) for k, v in w.items() if k.startswith("adjust:")}
            for t in sample_times(float(w["start"]), float(w["end"]), float(w["step"])):
                at = datetime.fromtimestamp(t, UTC)
                quotes = [(s, self._quote(s, t, adjust)) for s in symbols]
                steps.append([Ticker(s, q.bid, q.ask, at, last=q.mid) for s, q in quotes])
        return steps, windows[-1][0] if windows else after

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
        self._guard.forget()

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

    async def _read_order(self, order_id: str, symbol: str | None) -> PaperOrder:
        raw = await self._r.hget(self.keys.orders, order_id)
        return _decode_order(cast(str | None, raw), order_id, symbol)

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


def _decode_order(raw: str | None, order_id: str, symbol: str | None) -> PaperOrder:
    """The order stored as ``raw`` ('' or None: unknown), if it is of ``symbol`` (any: None)."""
    if not raw:
        raise OrderNotFound(f"EOrder:Unknown order {order_id!r}")
    paper = PaperOrder.decode(raw)
    if symbol is not None and paper.order.symbol != symbol:
        raise OrderNotFound(f"EOrder:Unknown order {order_id!r} for {symbol}")
    return paper


def _order_ids(symbol: str, last: int, count: int) -> list[str]:
    """Ids for ``count`` new orders of ``symbol`` after the pair's ``last``, numbered per pair:
    a pair's ids depend on its own placements only, not on how concurrent placements on other
    pairs (one settlement run places every pair's batch at once) reach the venue, so one
    seed's run gets the same ids every time (the matching order and trade ids follow them)."""
    pair = symbol.replace("/", "_")
    return [f"P-{pair}-{n:08d}" for n in range(last + 1, last + count + 1)]


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
