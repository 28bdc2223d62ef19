"""The paper venue: matching on the price path, reproducibility, rate counter, faults, and two
processes sharing one venue without double-spending or double-filling."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, cast

import pytest

from mmops.adapters.clock import SimulatedClock
from mmops.adapters.paper.exchange import PaperExchange
from mmops.adapters.paper.faults import FaultPlan
from mmops.adapters.paper.state import PaperOrder
from mmops.adapters.redis.client import Redis
from mmops.domain.exchange import ExchangeOrder, OrderRequest
from mmops.domain.models import OrderStatus, Side
from mmops.domain.ratelimit import TradingCounter
from mmops.domain.rounding import round_amount_down
from mmops.errors import (
    DeadlineRefused,
    ExchangeRejected,
    ExchangeUnavailable,
    InsufficientFunds,
    MinimumNotMet,
    OrderNotFound,
    RateLimited,
)
from tests.paper_race import fund_at_once

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture
async def venue_ids(redis: Redis) -> AsyncIterator[list[str]]:
    made: list[str] = []
    yield made
    for venue in made:
        await PaperExchange(redis, SimulatedClock(T0), venue=venue).reset()


def new_venue(redis: Redis, made: list[str], clock: SimulatedClock, **kw: object) -> PaperExchange:
    venue = f"paper-test-{uuid.uuid4().hex[:10]}"
    made.append(venue)
    return PaperExchange(redis, clock, venue=venue, **kw)  # type: ignore[arg-type]


def bid(symbol: str, price: Decimal, amount: str = "0.01") -> OrderRequest:
    return OrderRequest(symbol, Side.BUY, Decimal(amount), price, str(uuid.uuid4()))


async def test_resting_buys_fill_when_the_price_comes_down_to_them(
    redis: Redis, venue_ids: list[str]
) -> None:
    clock = SimulatedClock(T0)
    ex = new_venue(redis, venue_ids, clock, seed=11)
    await ex.fund("USD", Decimal("100000"))
    ticker = (await ex.tickers(["BTC/USD"]))["BTC/USD"]
    await ex.match()  # starts the match clock
    price = ticker.bid - Decimal("100")
    [res] = await ex.place_batch([bid("BTC/USD", price, "0.1")])
    assert res.order is not None
    trades = []
    for _ in range(48):  # up to 8 simulated hours
        clock.advance(timedelta(minutes=10))
        trades += await ex.match()
        if (await ex.fetch_order("BTC/USD", res.order.id)).status is OrderStatus.FILLED:
            break
    order = await ex.fetch_order("BTC/USD", res.order.id)
    assert order.status is OrderStatus.FILLED and order.filled == Decimal("0.1")
    assert sum(t.amount for t in trades) == Decimal("0.1")
    assert all(t.price == price and t.side is Side.BUY for t in trades)
    fees = sum(t.fee for t in trades)
    assert fees == price * Decimal("0.1") * Decimal("0.0025")
    balances = await ex.balances()
    assert balances["BTC"].total == Decimal("0.1")
    assert balances["USD"].total == Decimal("100000") - price * Decimal("0.1") - fees
    assert balances["USD"].used == 0


async def test_the_same_seed_and_times_give_the_same_trades(
    redis: Redis, venue_ids: list[str]
) -> None:
    async def run() -> list[tuple[str, Decimal, Decimal, datetime]]:
        clock = SimulatedClock(T0)
        ex = new_venue(redis, venue_ids, clock, seed=5)
        await ex.fund("USD", Decimal("1000000"))
        await ex.match()
        for symbol in ("BTC/USD", "ETH/USD"):
            t = (await ex.tickers([symbol]))[symbol]
            tick = (await ex.markets())[symbol].tick
            await ex.place_batch(
                [
                    OrderRequest(symbol, Side.BUY, Decimal("0.05"), t.bid - tick * 30 * i,
                                 str(uuid.uuid5(uuid.NAMESPACE_URL, f"{symbol}/{i}")))
                    for i in range(1, 6)
                ]
            )  # fmt: skip
        trades = []
        for _ in range(30):
            clock.advance(timedelta(minutes=5))
            trades += await ex.match()
        return [(t.symbol, t.price, t.amount, t.timestamp) for t in trades]

    # Deterministic client ids (they key the venue's partial fills), fresh venue each run.
    first, second = await run(), await run()
    assert first and first == second


async def test_a_burst_over_the_trading_counter_is_rate_limited(
    redis: Redis, venue_ids: list[str]
) -> None:
    clock = SimulatedClock(T0)
    ex = new_venue(redis, venue_ids, clock, counter=TradingCounter(threshold=20, decay=1))
    await ex.fund("USD", Decimal("1000000"))
    price = (await ex.tickers(["BTC/USD"]))["BTC/USD"].bid - 1000
    placed = 0
    errors = []
    for _ in range(3):
        for res in await ex.place_batch([bid("BTC/USD", price) for _ in range(10)]):
            placed += res.placed
            errors.append(res.error)
    assert placed == 20
    assert sum(isinstance(e, RateLimited) for e in errors) == 10
    clock.advance(timedelta(seconds=10))  # the counter decays 1 per second
    assert all(r.placed for r in await ex.place_batch([bid("BTC/USD", price) for _ in range(10)]))


async def test_a_late_order_is_refused_per_order_and_charged_on_the_trading_counter(
    redis: Redis, venue_ids: list[str]
) -> None:
    clock = SimulatedClock(T0)
    ex = new_venue(redis, venue_ids, clock, counter=TradingCounter(threshold=4, decay=0.01))
    await ex.fund("USD", Decimal("1000000"))
    price = (await ex.tickers(["BTC/USD"]))["BTC/USD"].bid - 1000
    soon, later = T0 + timedelta(seconds=5), T0 + timedelta(seconds=30)
    requests = [replace(bid("BTC/USD", price), deadline=d) for d in (soon, later, None)]
    clock.advance(timedelta(seconds=6))
    results = await ex.place_batch(requests)
    assert [r.placed for r in results] == [False, True, True]
    assert isinstance(results[0].error, DeadlineRefused)
    assert str(results[0].error) == "EService:Deadline elapsed"
    # Three orders reached the venue, the refused one too: one more fits under 4, two do not.
    more = await ex.place_batch([bid("BTC/USD", price) for _ in range(2)])
    assert all(isinstance(r.error, RateLimited) for r in more)


async def test_a_deadline_outside_krakens_window_is_refused(
    redis: Redis, venue_ids: list[str]
) -> None:
    ex = new_venue(redis, venue_ids, SimulatedClock(T0))
    await ex.fund("USD", Decimal("1000000"))
    price = (await ex.tickers(["BTC/USD"]))["BTC/USD"].bid - 1000
    deadlines = [T0 + timedelta(seconds=s) for s in (1, 2, 60, 61)]
    results = await ex.place_batch([replace(bid("BTC/USD", price), deadline=d) for d in deadlines])
    assert [r.placed for r in results] == [False, True, True, False]
    assert {str(r.error) for r in results if r.error} == {"EGeneral:Invalid arguments:deadline"}


@pytest.mark.parametrize(("client_ids", "reused"), [("open", True), ("ever", False)])
async def test_a_cancelled_orders_client_id_is_free_again_unless_ids_are_kept_for_ever(
    redis: Redis, venue_ids: list[str], client_ids: str, reused: bool
) -> None:
    ex = new_venue(redis, venue_ids, SimulatedClock(T0), client_ids=client_ids)
    await ex.fund("USD", Decimal("1000000"))
    price = (await ex.tickers(["BTC/USD"]))["BTC/USD"].bid - 1000
    request = bid("BTC/USD", price)
    [first] = await ex.place_batch([request])
    [twin] = await ex.place_batch([request])
    assert first.order is not None and isinstance(twin.error, ExchangeRejected)
    await ex.cancel("BTC/USD", first.order.id)
    [again] = await ex.place_batch([request])
    assert again.placed is reused
    found = await ex.find_by_client_id("BTC/USD", request.client_order_id)
    assert found is not None
    assert found.id == (again.order.id if again.order else first.order.id)


def test_client_id_uniqueness_is_open_or_ever(redis: Redis) -> None:
    with pytest.raises(ValueError, match="client_ids"):
        PaperExchange(redis, SimulatedClock(T0), client_ids="never")  # type: ignore[arg-type]


async def test_an_injected_failure_fails_only_that_call(redis: Redis, venue_ids: list[str]) -> None:
    ex = new_venue(
        redis, venue_ids, SimulatedClock(T0), faults=FaultPlan(fail_calls=frozenset({2}))
    )
    await ex.tickers(["BTC/USD"])
    with pytest.raises(ExchangeUnavailable, match="injected"):
        await ex.tickers(["BTC/USD"])
    assert "BTC/USD" in await ex.tickers(["BTC/USD"])


async def test_an_injected_rejection_refuses_that_order(redis: Redis, venue_ids: list[str]) -> None:
    faults = FaultPlan(reject_orders={2: "insufficient_funds"})
    ex = new_venue(redis, venue_ids, SimulatedClock(T0), faults=faults)
    await ex.fund("USD", Decimal("100000"))
    price = (await ex.tickers(["BTC/USD"]))["BTC/USD"].bid - 1000
    results = await ex.place_batch([bid("BTC/USD", price) for _ in range(3)])
    assert [r.placed for r in results] == [True, False, True]


async def test_a_price_shock_moves_the_quotes(redis: Redis, venue_ids: list[str]) -> None:
    ex = new_venue(redis, venue_ids, SimulatedClock(T0))
    before = (await ex.tickers(["ETH/USD"]))["ETH/USD"]
    await ex.shock("ETH/USD", Decimal("0.8"))
    after = (await ex.tickers(["ETH/USD"]))["ETH/USD"]
    assert after.bid < before.bid * Decimal("0.81")


def test_fault_settings_are_validated() -> None:
    plan = FaultPlan.from_dict({"latency_ms": 50, "timeout_after_accept": [2]})
    assert plan.latency == 0.05 and plan.timeout_after_accept == {2}
    with pytest.raises(ValueError, match="unknown fault"):
        FaultPlan.from_dict({"explode": True})
    with pytest.raises(ValueError, match="unknown rejection"):
        FaultPlan(reject_orders={1: "meteor"})


async def test_two_processes_on_one_venue_keep_balances_and_orders_consistent(
    redis_url: str, redis: Redis, venue_ids: list[str]
) -> None:
    clock = SimulatedClock(T0)
    ex = new_venue(redis, venue_ids, clock, seed=3)
    funding = {
        "USD": Decimal("50000"),
        "EUR": Decimal("50000"),
        "BTC": Decimal("2"),
        "ETH": Decimal("20"),
    }
    for asset, amount in funding.items():
        await ex.fund(asset, amount)
    await ex.match()
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.integration.paper_worker",
            redis_url,
            ex.venue,
            str(worker),
            "25",
            env=env,
            stderr=subprocess.PIPE,
        )
        for worker in (1, 2)
    ]
    for proc in procs:
        _, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()

    raw_orders = await redis.hgetall(ex.keys.orders)
    orders = [PaperOrder.decode(v) for v in raw_orders.values()]
    trades, _ = await ex.trades()
    assert len(orders) > 50 and trades
    # No order filled twice: its trades add up to exactly its filled amount, never beyond.
    traded: dict[str, Decimal] = defaultdict(Decimal)
    for t in trades:
        traded[t.order_id] += t.amount
    for paper in orders:
        assert traded[paper.order.id] == paper.order.filled <= paper.order.amount
    # Balances equal funding plus every trade, and what is held equals the open orders' holds.
    markets = await ex.markets()
    expected = defaultdict(Decimal, funding)
    for t in trades:
        m = markets[t.symbol]
        sign = 1 if t.side is Side.BUY else -1
        expected[m.base] += sign * t.amount
        expected[m.quote] -= sign * t.amount * t.price + t.fee
    held: dict[str, Decimal] = defaultdict(Decimal)
    open_ids = await redis.smembers(ex.keys.open)
    for paper in orders:
        is_open = paper.order.status is OrderStatus.OPEN
        assert (paper.order.id in open_ids) == is_open
        if is_open:
            m = markets[paper.order.symbol]
            held[m.base if paper.order.side is Side.SELL else m.quote] += paper.hold
        else:
            assert paper.hold == 0 or paper.order.status is OrderStatus.FILLED
    for asset, balance in (await ex.balances()).items():
        assert balance.total == expected[asset], asset
        assert balance.used == held[asset], asset
        assert balance.free >= 0, asset


class CountingRedis:
    """Counts the commands a venue sends (each is one round trip: the venue pipelines none)."""

    def __init__(self, redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sent: list[str] = []
        send = redis.execute_command

        async def counted(*args: Any, **kw: Any) -> Any:
            self.sent.append(str(args[0]))
            return await send(*args, **kw)

        monkeypatch.setattr(redis, "execute_command", counted)

    def take(self) -> list[str]:
        sent, self.sent = self.sent, []
        return sent


def asks(symbol: str, price: Decimal, count: int, amount: str = "0.01") -> list[OrderRequest]:
    return [
        OrderRequest(symbol, Side.SELL, Decimal(amount), price + i, str(uuid.uuid4()))
        for i in range(count)
    ]


async def test_a_batch_amend_cancel_and_each_read_cost_one_round_trip(
    redis: Redis, venue_ids: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ex = new_venue(redis, venue_ids, SimulatedClock(T0))
    await ex.fund("BTC", Decimal(1))
    price = (await ex.tickers(["BTC/USD"]))["BTC/USD"].ask + 1000
    await ex.balances(), await ex.open_orders(), await ex.find_by_client_id("BTC/USD", "-")
    counting = CountingRedis(redis, monkeypatch)  # the scripts are loaded on the server now
    first = await ex.place_batch(asks("BTC/USD", price, 15))
    assert all(r.placed for r in first) and len(counting.take()) <= 2  # learns the pair's state
    second = await ex.place_batch(asks("BTC/USD", price + 100, 15))
    assert all(r.placed for r in second) and len(counting.take()) == 1
    order = cast(ExchangeOrder, second[0].order)
    assert (await ex.amend("BTC/USD", order.id, price + 50)).price == price + 50
    assert len(counting.take()) == 1
    assert (await ex.cancel("BTC/USD", order.id)).status is OrderStatus.CANCELED
    assert len(counting.take()) == 1
    await ex.balances()
    assert len(await ex.open_orders("BTC/USD")) == 29
    assert await ex.find_by_client_id("BTC/USD", order.client_order_id or "") is not None
    assert len(await ex.fetch_orders([order.id])) == 1
    assert len(counting.take()) == 4


async def test_what_another_handle_changed_is_seen_before_anything_is_decided(
    redis: Redis, venue_ids: list[str]
) -> None:
    one = new_venue(redis, venue_ids, SimulatedClock(T0))
    other = PaperExchange(redis, SimulatedClock(T0), venue=one.venue)
    await one.fund("BTC", Decimal(1))
    price = (await one.tickers(["BTC/USD"]))["BTC/USD"].ask + 1000
    [placed] = await one.place_batch(asks("BTC/USD", price, 1, "0.5"))
    await other.fund("BTC", Decimal("-0.4"))  # one still remembers 0.5 BTC free
    [refused] = await one.place_batch(asks("BTC/USD", price, 1, "0.5"))
    assert isinstance(refused.error, InsufficientFunds)
    await other.fund("BTC", Decimal(1))
    await one.fund("BTC", Decimal("-1.1"))  # all that is free now, though one saw less
    with pytest.raises(InsufficientFunds):
        await one.fund("BTC", Decimal("-0.00000001"))
    # A client id another handle took is refused; an order it cancelled is not cancelled twice.
    [taken] = await other.place_batch(asks("BTC/USD", price, 1, "0.00001"))
    assert isinstance(taken.error, MinimumNotMet)  # refused: the id stays free
    await one.fund("BTC", Decimal(1))
    [mine] = await other.place_batch([replace(taken.request, amount=Decimal("0.01"))])
    [twin] = await one.place_batch([mine.request])
    assert mine.placed and "Duplicate client order id" in str(twin.error)
    order = cast(ExchangeOrder, placed.order)
    await other.cancel("BTC/USD", order.id)
    with pytest.raises(OrderNotFound):
        await one.cancel("BTC/USD", order.id)
    with pytest.raises(OrderNotFound):
        await one.amend("BTC/USD", order.id, price + 1)
    balance = (await one.balances())["BTC"]
    assert balance.total == Decimal("1.5") and balance.used == Decimal("0.01")


@pytest.mark.parametrize("client_id", ["a|b", "3:x", "0:", "é€ü", 'q"\\\n|', "|" * 20])
async def test_any_client_order_id_is_kept_and_found(
    redis: Redis, venue_ids: list[str], client_id: str
) -> None:
    ex = new_venue(redis, venue_ids, SimulatedClock(T0))
    await ex.fund("BTC", Decimal(1))
    price = (await ex.tickers(["BTC/USD"]))["BTC/USD"].ask + 1000
    request = OrderRequest("BTC/USD", Side.SELL, Decimal("0.01"), price, client_id)
    [placed, twin] = await ex.place_batch([request, replace(request, price=price + 1)])
    assert placed.placed and "Duplicate client order id" in str(twin.error)
    found = await ex.find_by_client_id("BTC/USD", client_id)
    assert found is not None and found.client_order_id == client_id
    await ex.cancel("BTC/USD", found.id)
    [again] = await ex.place_batch([replace(request, price=price + 2)])
    assert again.placed  # "open": a cancelled order frees its id


async def test_handles_placing_at_once_never_hold_more_than_there_is(
    redis: Redis, venue_ids: list[str]
) -> None:
    one = new_venue(redis, venue_ids, SimulatedClock(T0))
    handles = [one, PaperExchange(redis, SimulatedClock(T0), venue=one.venue)]
    await one.fund("USD", Decimal(1000))
    tickers = await one.tickers(["BTC/USD", "ETH/USD"])

    async def bids(ex: PaperExchange, symbol: str) -> list[bool]:
        price = tickers[symbol].bid - 100
        amount = round_amount_down(Decimal(99) / price, Decimal("0.00000001"))  # 99.25 held
        placed = []
        for _ in range(6):
            batch = [OrderRequest(symbol, Side.BUY, amount, price, str(uuid.uuid4()))]
            placed += [r.placed for r in await ex.place_batch(batch)]
        return placed

    outcomes = await asyncio.gather(*[bids(ex, s) for ex in handles for s in tickers])
    accepted = sum(sum(o) for o in outcomes)
    usd = (await one.balances())["USD"]
    assert accepted == 10 and usd.total == 1000 and 0 <= usd.free < 100
    holds = [o for o in await one.open_orders() if o.side is Side.BUY]
    assert len(holds) == 10


async def test_many_handles_changing_one_balance_at_once_all_get_through(redis_url: str) -> None:
    """Eight handles (eight connections) fund one asset 25 times each at once: every change
    lands. A handle that just wrote knows the value it wrote and would win every race against
    the others, which must read it first, until they ran out of attempts (``busy``): losers
    back off instead."""
    assert await fund_at_once(redis_url, handles=8, times=25) == Decimal(200)
