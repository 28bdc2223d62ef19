"""One contract, every exchange: the paper venue and the ccxt adapter on the local Kraken server.

Each test states a rule of the ``Exchange`` port that settlement relies on.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from decimal import Decimal

import pytest

from mmops.domain.exchange import OrderRequest, PlacementResult
from mmops.domain.models import OrderStatus, PairStatus, Side
from mmops.errors import (
    DeadlineRefused,
    ExchangeRejected,
    ExchangeTimeout,
    InsufficientFunds,
    MinimumNotMet,
    OrderNotFound,
    PostOnlyWouldTake,
    TemporaryError,
)
from tests.contract import venues

pytestmark = pytest.mark.integration

SYMBOL = "BTC/USD"


@pytest.fixture(params=["paper", "kraken", "paper-post-only-reject", "kraken-post-only-reject"])
async def venue(request: pytest.FixtureRequest, redis: object) -> AsyncIterator[venues.Venue]:
    """Each venue with a crossing post-only order accepted then engine-cancelled (as Kraken is
    reported to do) and, ``-post-only-reject``, refused outright (Kraken's error list)."""
    cross = "reject" if request.param.endswith("-reject") else "cancel"
    if request.param.startswith("paper"):
        async with venues.paper_venue(redis, cross) as v:  # type: ignore[arg-type]
            yield v
    else:
        async with venues.kraken_venue(cross) as k:
            yield k


def cid() -> str:
    return str(uuid.uuid4())


async def sell_prices(venue: venues.Venue, count: int) -> list[Decimal]:
    """Prices a post-only sell can rest at: above the best ask, a tick apart."""
    ticker = (await venue.exchange.tickers([SYMBOL]))[SYMBOL]
    tick = (await venue.exchange.markets())[SYMBOL].tick
    return [ticker.ask + tick * (10 + i) for i in range(count)]


def sell(
    price: Decimal,
    amount: str = "0.01",
    client_id: str | None = None,
    deadline: datetime | None = None,
) -> OrderRequest:
    return OrderRequest(
        SYMBOL, Side.SELL, Decimal(amount), price, client_id or cid(), deadline=deadline
    )


async def place_one(venue: venues.Venue, request: OrderRequest) -> PlacementResult:
    [result] = await venue.exchange.place_batch([request])
    return result


async def test_a_batch_gets_one_result_per_order_in_order(venue: venues.Venue) -> None:
    await venue.fund("BTC", Decimal("1"))
    requests = [sell(p) for p in await sell_prices(venue, 3)]
    results = await venue.exchange.place_batch(requests)
    assert [r.request for r in results] == requests
    assert all(r.placed for r in results)
    orders = [r.order for r in results if r.order]
    assert [o.client_order_id for o in orders] == [r.client_order_id for r in requests]
    assert all(
        o.status is OrderStatus.OPEN and o.price == r.price
        for o, r in zip(orders, requests, strict=True)
    )
    open_ids = {o.id for o in await venue.exchange.open_orders(SYMBOL)}
    assert open_ids >= {o.id for o in orders}


async def test_a_batch_the_venue_admitted_is_then_placed_whole(venue: venues.Venue) -> None:
    """``admit`` returns once the pair's counter has room (here at once: it is empty) and the
    batch that follows, deadline stamped after it, is placed."""
    await venue.fund("BTC", Decimal("1"))
    await venue.exchange.admit(SYMBOL, 3)
    deadline = venue.now() + timedelta(seconds=15)
    requests = [sell(p, deadline=deadline) for p in await sell_prices(venue, 3)]
    assert all(r.placed for r in await venue.exchange.place_batch(requests))


async def test_balances_hold_what_open_orders_reserve(venue: venues.Venue) -> None:
    await venue.fund("BTC", Decimal("1"))
    before = (await venue.exchange.balances())["BTC"]
    await venue.exchange.place_batch([sell(p, "0.2") for p in await sell_prices(venue, 2)])
    after = (await venue.exchange.balances())["BTC"]
    assert after.total == before.total
    assert after.used == before.used + Decimal("0.4")
    assert after.free == after.total - after.used


async def test_a_post_only_sell_at_the_bid_never_rests(venue: venues.Venue) -> None:
    """Refused (``EOrder:Post only order``), or accepted and at once cancelled by the engine:
    either way nothing rests, nothing is held, and the exchange shows the order closed."""
    await venue.fund("BTC", Decimal("1"))
    bid = (await venue.exchange.tickers([SYMBOL]))[SYMBOL].bid
    [result] = await venue.exchange.place_batch([sell(bid)])
    found = await venue.exchange.find_by_client_id(SYMBOL, result.request.client_order_id)
    if venue.post_only_cross == "reject":
        assert not result.placed
        assert isinstance(result.error, PostOnlyWouldTake)
        assert found is None
    else:
        assert result.order is not None
        fetched = await venue.exchange.fetch_order(SYMBOL, result.order.id)
        assert fetched.status is OrderStatus.CANCELED and fetched.filled == 0
        assert found is not None and found.id == result.order.id and not found.live
    assert await venue.exchange.open_orders(SYMBOL) == []
    assert (await venue.exchange.balances())["BTC"].used == 0


async def resting(venue: venues.Venue, amount: str = "0.3") -> tuple[str, Decimal]:
    """A resting sell's id and price."""
    await venue.fund("BTC", Decimal("1"))
    [price] = await sell_prices(venue, 1)
    [result] = await venue.exchange.place_batch([sell(price, amount)])
    assert result.order is not None
    return result.order.id, price


async def test_a_cancel_answered_pending_keeps_the_order_open_until_the_venue_cancels_it(
    venue: venues.Venue,
) -> None:
    order_id, _ = await resting(venue)
    venue.pend_cancels()
    answered = await venue.exchange.cancel(SYMBOL, order_id)
    assert answered.status is OrderStatus.OPEN  # pending: not released
    assert (await venue.exchange.balances())["BTC"].used == Decimal("0.3")
    assert [o.id for o in await venue.exchange.open_orders(SYMBOL)] == [order_id]
    await venue.settle_cancels()
    fetched = await venue.exchange.fetch_order(SYMBOL, order_id)
    assert fetched.status is OrderStatus.CANCELED
    assert (await venue.exchange.balances())["BTC"].used == 0


async def test_an_order_whose_cancel_is_pending_may_still_fill(venue: venues.Venue) -> None:
    order_id, _ = await resting(venue)
    venue.pend_cancels()
    assert (await venue.exchange.cancel(SYMBOL, order_id)).status is OrderStatus.OPEN
    await venue.fill(SYMBOL, order_id)
    await venue.settle_cancels()
    fetched = await venue.exchange.fetch_order(SYMBOL, order_id)
    assert fetched.status is OrderStatus.FILLED and fetched.filled == Decimal("0.3")


async def test_amend_moves_a_resting_sell_in_place(venue: venues.Venue) -> None:
    """Same id, same client id, new price, still open and holding the same quantity."""
    order_id, price = await resting(venue)
    before = await venue.exchange.fetch_order(SYMBOL, order_id)
    tick = (await venue.exchange.markets())[SYMBOL].tick
    new_price = price + 5 * tick
    amended = await venue.exchange.amend(SYMBOL, order_id, new_price)
    assert (amended.id, amended.price, amended.status) == (order_id, new_price, OrderStatus.OPEN)
    assert amended.client_order_id == before.client_order_id
    assert [o.id for o in await venue.exchange.open_orders(SYMBOL)] == [order_id]
    assert (await venue.exchange.balances())["BTC"].used == Decimal("0.3")


async def test_a_crossing_amend_is_refused_and_the_order_is_left_as_it_was(
    venue: venues.Venue,
) -> None:
    order_id, price = await resting(venue)
    bid = (await venue.exchange.tickers([SYMBOL]))[SYMBOL].bid
    with pytest.raises(PostOnlyWouldTake):
        await venue.exchange.amend(SYMBOL, order_id, bid)
    fetched = await venue.exchange.fetch_order(SYMBOL, order_id)
    assert (fetched.price, fetched.status) == (price, OrderStatus.OPEN)


async def test_an_order_no_longer_open_cannot_be_amended(venue: venues.Venue) -> None:
    order_id, price = await resting(venue)
    await venue.exchange.cancel(SYMBOL, order_id)
    with pytest.raises(OrderNotFound):
        await venue.exchange.amend(SYMBOL, order_id, price)


async def test_insufficient_funds_in_the_middle_of_a_batch_fails_only_that_order(
    venue: venues.Venue,
) -> None:
    await venue.fund("BTC", Decimal("0.25"))
    prices = await sell_prices(venue, 3)
    results = await venue.exchange.place_batch(
        [sell(prices[0], "0.1"), sell(prices[1], "0.2"), sell(prices[2], "0.1")]
    )
    assert [r.placed for r in results] == [True, False, True]
    assert isinstance(results[1].error, InsufficientFunds)


async def test_an_order_below_the_minimum_is_refused(venue: venues.Venue) -> None:
    await venue.fund("BTC", Decimal("1"))
    [price] = await sell_prices(venue, 1)
    [result] = await venue.exchange.place_batch([sell(price, "0.00001")])
    assert isinstance(result.error, MinimumNotMet)


async def test_an_order_is_found_by_its_client_order_id(venue: venues.Venue) -> None:
    await venue.fund("BTC", Decimal("1"))
    [price] = await sell_prices(venue, 1)
    request = sell(price)
    [result] = await venue.exchange.place_batch([request])
    found = await venue.exchange.find_by_client_id(SYMBOL, request.client_order_id)
    assert found is not None and result.order is not None
    assert found.id == result.order.id
    assert await venue.exchange.find_by_client_id(SYMBOL, cid()) is None


async def test_cancel_releases_the_hold_and_a_second_cancel_is_not_found(
    venue: venues.Venue,
) -> None:
    await venue.fund("BTC", Decimal("1"))
    [price] = await sell_prices(venue, 1)
    [result] = await venue.exchange.place_batch([sell(price, "0.3")])
    assert result.order is not None
    canceled = await venue.exchange.cancel(SYMBOL, result.order.id)
    assert canceled.status is OrderStatus.CANCELED
    assert (await venue.exchange.balances())["BTC"].used == 0
    fetched = await venue.exchange.fetch_order(SYMBOL, result.order.id)
    assert fetched.status is OrderStatus.CANCELED
    with pytest.raises(OrderNotFound):
        await venue.exchange.cancel(SYMBOL, result.order.id)


async def test_a_timeout_after_accept_is_found_by_lookup_so_nothing_is_placed_twice(
    venue: venues.Venue,
) -> None:
    await venue.fund("BTC", Decimal("1"))
    [price] = await sell_prices(venue, 1)
    request = sell(price)
    flaky = venue.timing_out_after_accept()
    [result] = await flaky.place_batch([request])
    assert isinstance(result.error, ExchangeTimeout)
    found = await venue.exchange.find_by_client_id(SYMBOL, request.client_order_id)
    assert found is not None and found.status is OrderStatus.OPEN
    mine = [
        o
        for o in await venue.exchange.open_orders(SYMBOL)
        if o.client_order_id == request.client_order_id
    ]
    assert len(mine) == 1


async def test_oversized_and_mixed_batches_are_refused_before_any_call(venue: venues.Venue) -> None:
    [price] = await sell_prices(venue, 1)
    with pytest.raises(ValueError, match="at most 15"):
        await venue.exchange.place_batch([sell(price) for _ in range(16)])
    other = OrderRequest("ETH/USD", Side.SELL, Decimal("1"), Decimal("5000"), cid())
    with pytest.raises(ValueError, match="one pair"):
        await venue.exchange.place_batch([sell(price), other])


@pytest.mark.parametrize("count", [1, 3], ids=["alone", "batch"])
async def test_an_order_that_arrives_after_its_deadline_is_refused_and_nothing_rests(
    venue: venues.Venue, count: int
) -> None:
    await venue.fund("BTC", Decimal("1"))
    deadline = venue.now() + timedelta(seconds=5)
    requests = [sell(p, deadline=deadline) for p in await sell_prices(venue, count)]
    venue.advance(6)  # the worker that fenced these orders was paused past their deadline
    results = await venue.exchange.place_batch(requests)
    assert [type(r.error) for r in results] == [DeadlineRefused] * count
    assert await venue.exchange.open_orders(SYMBOL) == []
    assert (await venue.exchange.balances())["BTC"].used == 0
    for request in requests:
        assert await venue.exchange.find_by_client_id(SYMBOL, request.client_order_id) is None


@pytest.mark.parametrize("count", [1, 3], ids=["alone", "batch"])
async def test_a_deadline_within_the_window_is_placed(venue: venues.Venue, count: int) -> None:
    await venue.fund("BTC", Decimal("1"))
    deadline = venue.now() + timedelta(seconds=30)
    requests = [sell(p, deadline=deadline) for p in await sell_prices(venue, count)]
    results = await venue.exchange.place_batch(requests)
    assert all(r.placed for r in results)
    open_ids = {o.id for o in await venue.exchange.open_orders(SYMBOL)}
    assert open_ids == {r.order.id for r in results if r.order}


async def test_a_client_id_is_taken_while_its_order_is_open_and_freed_by_cancel_or_fill(
    venue: venues.Venue,
) -> None:
    """Kraken keeps a cl_ord_id unique among open orders only."""
    await venue.fund("BTC", Decimal("1"))
    client_id = cid()
    first_price, second_price = await sell_prices(venue, 2)
    first = await place_one(venue, sell(first_price, client_id=client_id))
    assert first.order is not None
    twin = await place_one(venue, sell(second_price, client_id=client_id))
    assert not twin.placed and isinstance(twin.error, ExchangeRejected)
    await venue.exchange.cancel(SYMBOL, first.order.id)
    second = await place_one(venue, sell(second_price, client_id=client_id))
    assert second.order is not None
    await venue.fill(SYMBOL, second.order.id)
    [third_price] = await sell_prices(venue, 1)
    third = await place_one(venue, sell(third_price, client_id=client_id))
    assert third.order is not None
    assert {second.order.id, third.order.id}.isdisjoint({first.order.id})


async def test_lookup_returns_the_open_order_else_the_most_recent_closed_one(
    venue: venues.Venue,
) -> None:
    await venue.fund("BTC", Decimal("1"))
    client_id = cid()
    orders = []
    for price in await sell_prices(venue, 3):
        result = await place_one(venue, sell(price, client_id=client_id))
        assert result.order is not None
        orders.append(result.order)
        found = await venue.exchange.find_by_client_id(SYMBOL, client_id)
        assert found is not None and found.id == result.order.id
        assert found.status is OrderStatus.OPEN
        venue.advance(1)
        await venue.exchange.cancel(SYMBOL, result.order.id)
        found = await venue.exchange.find_by_client_id(SYMBOL, client_id)
        assert found is not None and found.id == result.order.id
        assert found.status is OrderStatus.CANCELED
    assert len({o.id for o in orders}) == 3


async def test_two_orders_of_one_batch_with_one_client_id_place_only_the_first(
    venue: venues.Venue,
) -> None:
    await venue.fund("BTC", Decimal("1"))
    client_id = cid()
    first, second = await venue.exchange.place_batch(
        [sell(p, client_id=client_id) for p in await sell_prices(venue, 2)]
    )
    assert first.placed and isinstance(second.error, ExchangeRejected)
    assert len(await venue.exchange.open_orders(SYMBOL)) == 1


async def test_a_post_only_pair_admits_a_post_only_sell(venue: venues.Venue) -> None:
    """Kraken's ``post_only`` mode admits exactly what a take-profit is."""
    await venue.set_pair_status(SYMBOL, PairStatus.POST_ONLY)
    await venue.fund("BTC", Decimal("1"))
    [price] = await sell_prices(venue, 1)
    result = await place_one(venue, sell(price))
    assert result.order is not None
    assert [o.id for o in await venue.exchange.open_orders(SYMBOL)] == [result.order.id]


async def test_a_cancel_only_pair_refuses_a_new_sell(venue: venues.Venue) -> None:
    await venue.fund("BTC", Decimal("1"))
    [price] = await sell_prices(venue, 1)
    await venue.set_pair_status(SYMBOL, PairStatus.CANCEL_ONLY)
    result = await place_one(venue, sell(price))
    assert not result.placed and isinstance(result.error, ExchangeRejected)
    assert await venue.exchange.open_orders(SYMBOL) == []


async def test_a_throttled_call_is_temporary_not_a_rejection(venue: venues.Venue) -> None:
    """Kraken's ``EService:Throttled`` (too many concurrent requests): retry later."""
    throttled = venue.throttling_next_call()
    with pytest.raises(TemporaryError):
        await throttled.balances()
    assert isinstance(await venue.exchange.balances(), dict)


async def test_fetch_orders_answers_open_and_closed_orders_by_id_and_leaves_unknown_ones_out(
    venue: venues.Venue,
) -> None:
    filled_id, _ = await resting(venue, "0.1")
    await venue.fill(SYMBOL, filled_id)  # (on paper: the price path lifts over every sell)
    cancelled_id, _ = await resting(venue, "0.1")
    await venue.exchange.cancel(SYMBOL, cancelled_id)
    open_id, _ = await resting(venue, "0.1")
    unknown = "OUNKNO-WNORD-ER0000"

    found = await venue.exchange.fetch_orders([open_id, cancelled_id, filled_id, unknown])

    assert {oid: o.status for oid, o in found.items()} == {
        open_id: OrderStatus.OPEN,
        cancelled_id: OrderStatus.CANCELED,
        filled_id: OrderStatus.FILLED,
    }
    assert await venue.exchange.fetch_orders([]) == {}


async def test_order_trades_lists_a_filled_orders_executions_under_stable_trade_ids(
    venue: venues.Venue,
) -> None:
    """What reconciliation records as fills: the executions add up to the filled amount,
    and a second look gives the same trade ids (a replay is recognised)."""
    order_id, price = await resting(venue, "0.1")
    assert await venue.exchange.order_trades(SYMBOL, order_id) == []
    await venue.fill(SYMBOL, order_id)

    trades = await venue.exchange.order_trades(SYMBOL, order_id)

    assert trades and {t.order_id for t in trades} == {order_id}
    assert sum(t.amount for t in trades) == Decimal("0.1")
    assert all(t.side is Side.SELL and t.price >= price for t in trades)
    assert [t.id for t in await venue.exchange.order_trades(SYMBOL, order_id)] == [
        t.id for t in trades
    ]
    with pytest.raises(OrderNotFound):
        await venue.exchange.order_trades(SYMBOL, "OUNKNO-WNORD-ER0000")
