"""What the reliability scenarios share: ``mmops`` run as OS processes, a world on a database
of its own, the trading loop's side (filled buys), and the audit of a paper venue against the
records (every take-profit placed once, nothing left behind).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any, cast

from mmops.adapters.paper.catalog import BY_SYMBOL
from mmops.adapters.paper.state import PaperOrder
from mmops.adapters.postgres import schema
from mmops.adapters.redis import keys
from mmops.domain.ids import client_order_id
from mmops.domain.models import Fill, Order, OrderStatus, Position, Side
from mmops.domain.rounding import round_amount_down
from tests.integration.world import World, world
from tests.reliability.ledger import Scenario
from tests.servers import throwaway_database

MakeScenario = Callable[[int, str], Scenario]
CLI_TIMEOUT = 60.0  # seconds any one mmops process may take before the test kills it


# -- mmops as an OS process ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Finished:
    rc: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def cli_env(w: World, **extra: str) -> dict[str, str]:
    """The environment of an ``mmops`` process on ``w``'s Redis, database and paper venue."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMOPS_")}
    env.update(
        MMOPS_REDIS_URL=w.rt.urls.redis,
        MMOPS_DATABASE_URL=w.rt.urls.database,
        MMOPS_PAPER_VENUE=w.exchange.venue,
        MMOPS_LOG_LEVEL="WARNING",
    )
    env.update(extra)
    return env


async def spawn(
    env: Mapping[str, str], *args: str, quiet: bool = False
) -> asyncio.subprocess.Process:
    """Start ``mmops ARGS``; ``quiet`` discards its output (for a process that will be killed)."""
    sink = asyncio.subprocess.DEVNULL if quiet else asyncio.subprocess.PIPE
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mmops.entrypoints", *args, env=dict(env), stdout=sink, stderr=sink
    )


def kill(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL ``proc``; a process that has exited meanwhile is left as it is."""
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


async def finish(proc: asyncio.subprocess.Process, timeout: float = CLI_TIMEOUT) -> Finished:
    """Wait for a started process (killing it past ``timeout``) and collect its output."""
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        kill(proc)
        await proc.wait()
        raise AssertionError(f"mmops process {proc.pid} ran over {timeout} s") from None
    assert proc.returncode is not None
    return Finished(proc.returncode, (out or b"").decode(), (err or b"").decode())


async def mmops(env: Mapping[str, str], *args: str) -> Finished:
    return await finish(await spawn(env, *args))


@contextlib.asynccontextmanager
async def private_world(
    redis_url: str, admin_database_url: str, **settings: object
) -> AsyncIterator[World]:
    """A world on a database of its own (migrated), so ``mmops`` processes that discover
    sessions find this test's sessions and no other test's."""
    with throwaway_database(admin_database_url, prefix="mmops_rel") as url:
        await asyncio.to_thread(schema.upgrade, url)
        async with world(redis_url, url, **settings) as w:
            yield w


# -- seeding: the trading loop's side ------------------------------------------------------


async def buy(w: World, sid: str, pair: str, age: timedelta, below_bid_ticks: int = 5) -> str:
    """Record one filled buy of about 50 quote, opened ``age`` ago, and fund the venue with
    what it bought; return its position id."""
    market = BY_SYMBOL[pair].market
    ticker = (await w.exchange.tickers([pair]))[pair]
    price = ticker.bid - market.tick * below_bid_ticks
    qty = max(round_amount_down(Decimal(50) / price, market.lot), market.min_amount)
    at = w.rt.clock.now() - age
    oid = f"b-{pair.replace('/', '')}-{uuid.uuid4().hex[:10]}"
    await w.rt.orders.save(Order(sid, oid, pair, Side.BUY, price, qty, at, OrderStatus.FILLED, qty))
    fee = (price * qty * market.maker_fee).quantize(Decimal("0.00000001"))
    await w.rt.fills.record(Fill(sid, oid, pair, Side.BUY, price, qty, fee, at))
    await w.exchange.fund(market.base, qty)
    return oid


async def grow(w: World, p: Position) -> Decimal:
    """A further fill of the buy behind ``p`` (as large again): the position grows after its
    take-profit was placed, so it needs a second one. Returns the quantity added."""
    market = BY_SYMBOL[p.symbol].market
    qty, price = p.filled, p.average_price.quantize(market.tick)
    at = p.opened_at + timedelta(seconds=p.version + 1)
    fee = (price * qty * market.maker_fee).quantize(Decimal("0.00000001"))
    fill = Fill(p.session_id, p.position_id, p.symbol, Side.BUY, price, qty, fee, at)
    await w.rt.fills.record(fill)
    total = p.filled + qty
    await w.rt.orders.save(
        Order(
            p.session_id,
            p.position_id,
            p.symbol,
            Side.BUY,
            price,
            total,
            p.opened_at,
            OrderStatus.FILLED,
            total,
        )
    )
    await w.exchange.fund(market.base, qty)
    return qty


# -- the audit: venue against records --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VenueOrder:
    order_id: str
    client_order_id: str
    amount: Decimal
    live: bool  # open or filled: it holds (or held) what it was placed for


async def paper_sells(w: World) -> list[VenueOrder]:
    """Every sell on ``w``'s paper venue, in any state."""
    raw = cast(dict[str, str], await w.rt.redis.hgetall(w.exchange.keys.orders))
    sells = []
    for value in raw.values():
        o = PaperOrder.decode(value).order
        if o.side is Side.SELL:
            sells.append(VenueOrder(o.id, o.client_order_id or "", o.amount, o.live))
    return sells


@dataclass
class Audit:
    """What the venue holds, compared with what Redis records, for some sessions."""

    positions: list[Position] = field(default_factory=list)
    orders: list[VenueOrder] = field(default_factory=list)
    duplicate_client_ids: list[str] = field(default_factory=list)
    strangers: list[str] = field(default_factory=list)  # sells that are no TP of a position
    doubled: list[str] = field(default_factory=list)  # (position, generation) with 2+ live
    oversold: list[str] = field(default_factory=list)  # live TPs exceed the filled quantity
    untraced: list[str] = field(default_factory=list)  # neither recorded nor pending
    unrecorded: list[str] = field(default_factory=list)  # live but not recorded as coverage
    stale: list[str] = field(default_factory=list)  # recorded, but not live on the venue
    uncovered: list[str] = field(default_factory=list)  # quantity uncovered or pending
    inexact: list[str] = field(default_factory=list)  # live TPs ≠ filled quantity
    leftover_keys: list[str] = field(default_factory=list)
    unrecorded_ids: set[str] = field(default_factory=set)  # order ids of ``unrecorded``

    @property
    def live(self) -> int:
        return sum(o.live for o in self.orders)

    def always(self, s: Scenario) -> None:
        """What must hold at every instant, even right after a worker was killed."""
        check(s, "no client order id is on two venue orders", self.duplicate_client_ids)
        check(
            s,
            "every venue sell is the take-profit of a known (position, generation)",
            self.strangers,
        )
        check(s, "at most one live take-profit per (position, generation)", self.doubled)
        check(s, "Σ live take-profit quantity of a position ≤ its filled quantity", self.oversold)
        check(
            s,
            "every live take-profit on the venue is recorded or named by its position's "
            "pending marker",
            self.untraced,
        )

    def settled(self, s: Scenario) -> None:
        """What must hold after a normal settlement run."""
        self.always(s)
        check(
            s,
            "orders on the venue = take-profits recorded (each live order is recorded)",
            self.unrecorded,
        )
        check(
            s, "orders on the venue = take-profits recorded (each recorded one is live)", self.stale
        )
        check(
            s,
            "every coverable position is covered exactly once (Σ live take-profits = "
            "filled, nothing uncovered or pending)",
            self.uncovered + self.inexact,
        )
        check(
            s, "no lock:settlement:{S} or tp_attempt:{S}:* key is left behind", self.leftover_keys
        )


def check(s: Scenario, invariant: str, problems: Sequence[object]) -> None:
    """``s.holds(invariant)`` with the offending items printed (pytest shows them on failure)."""
    if problems:
        print(f"{invariant}: {len(problems)} problem(s), e.g. {list(problems)[:5]}")
    s.holds(invariant, not problems)


async def audit(
    w: World, sessions: Mapping[str, Sequence[str]], orders: Sequence[VenueOrder]
) -> Audit:
    """Compare the venue's sells with the positions of ``sessions`` (id → pairs)."""
    a = Audit(orders=list(orders))
    for sid, pairs in sessions.items():
        for pair in pairs:
            a.positions += await w.positions(sid, pair)
    owner: dict[str, tuple[Position, int]] = {}
    for p in a.positions:
        top = max([p.generation, *(x.generation for x in p.pending)])
        for g in range(top + 2):
            owner[client_order_id(p.session_id, p.position_id, g)] = (p, g)
    a.duplicate_client_ids = [
        c for c, n in Counter(o.client_order_id for o in orders).items() if n > 1
    ]
    a.strangers = [o.order_id for o in orders if o.client_order_id not in owner]
    mine = [o for o in orders if o.live and o.client_order_id in owner]
    recorded = await _recorded(w, [(owner[o.client_order_id][0], o) for o in mine])
    per_generation: Counter[tuple[str, int]] = Counter()
    live_amount: dict[str, Decimal] = defaultdict(Decimal)
    for o in mine:
        p, g = owner[o.client_order_id]
        per_generation[(p.position_id, g)] += 1
        live_amount[p.position_id] += o.amount
        if o.order_id not in recorded:
            a.unrecorded.append(f"{p.position_id}/{o.order_id}")
            a.unrecorded_ids.add(o.order_id)
            if all(x.client_order_id != o.client_order_id for x in p.pending):
                a.untraced.append(f"{p.position_id}/{o.order_id}")
    a.doubled = [f"{pid}/g{g}" for (pid, g), n in per_generation.items() if n > 1]
    live_ids = {o.order_id for o in mine}
    for p in a.positions:
        _check_position(a, p, live_amount[p.position_id], live_ids)
    a.leftover_keys = await leftover_claims(w, list(sessions))
    return a


def _check_position(a: Audit, p: Position, live: Decimal, live_ids: set[str]) -> None:
    if live > p.filled:
        a.oversold.append(f"{p.position_id}: {live} > {p.filled}")
    a.stale += [f"{p.position_id}/{oid}" for oid, _ in p.take_profits if oid not in live_ids]
    if p.uncovered > 0 or p.pending:
        a.uncovered.append(f"{p.position_id}: uncovered {p.uncovered}, pending {p.pending}")
    if live != p.filled - p.closed:
        a.inexact.append(f"{p.position_id}: live {live} of {p.filled}")


async def _recorded(w: World, pairs: Sequence[tuple[Position, VenueOrder]]) -> set[str]:
    """Order ids recorded as coverage: in their position's ``tp:`` fields with a tp_order key."""
    if not pairs:
        return set()
    async with w.rt.redis.pipeline(transaction=False) as pipe:
        for p, o in pairs:
            pipe.exists(keys.tp_order(p.session_id, o.order_id))
        exists = await pipe.execute()
    return {
        o.order_id
        for (p, o), there in zip(pairs, exists, strict=True)
        if there and o.order_id in dict(p.take_profits)
    }


async def leftover_claims(w: World, session_ids: Sequence[str]) -> list[str]:
    """``lock:settlement:{S}`` and ``tp_attempt:{S}:*`` keys of these sessions that exist."""
    found = []
    for sid in session_ids:
        async for key in w.rt.redis.scan_iter(match=keys.session_pattern(sid), count=1000):
            if str(key).startswith(("lock:settlement:", "tp_attempt:")):
                found.append(str(key))
    return found
