"""One contract, every exchange: the paper venue and the ccxt adapter on the local Kraken server.

Each test states a rule of the ``Exchange`` port that settlement relies on.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from mmops.domain.exchange import OrderRequest
from mmops.domain.models import OrderStatus, Side
from mmops.errors import (
    ExchangeTimeout,
    InsufficientFunds,
    MinimumNotMet,
    OrderNotFound,
    PostOnlyWouldTake,
)
from tests.contract import venues

pytestmark = pytest.mark.integration

SYMBOL = "BTC/USD"


@pytest.fixture(params=["paper", "kraken"])
async def venue(request: pytest.FixtureRequest, redis: object) -> AsyncIterator[venues.Venue]:
    if request.param == "paper":
        async with venues.paper_venue(redis) as v:  # type: ignore[arg-type]
            yield v
    else:
        async with venues.kraken_venue() as k:
            yield k


def cid() -> str:
    return str(uuid.uuid4())


async def sell_prices(venue: venues.Venue, count: int) -> list[Decimal]:
    """Prices a post-only sell can rest at: above the best ask, a tick apart."""
    ticker = (await venue.exchange.tickers([SYMBOL]))[SYMBOL]
    tick = (await venue.exchange.markets())[SYMBOL].tick
    return [ticker.ask + tick * (10 + i) for i in range(count)]


def sell(price: Decimal, amount: str = "0.01", client_id: str | None = None) -> OrderRequest:
    return OrderRequest(SYMBOL, Side.SELL, Decimal(amount), price, client_id or cid())


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


async def test_balances_hold_what_open_orders_reserve(venue: venues.Venue) -> None:
    await venue.fund("BTC", Decimal("1"))
    before = (await venue.exchange.balances())["BTC"]
    await venue.exchange.place_batch([sell(p, "0.2") for p in await sell_prices(venue, 2)])
    after = (await venue.exchange.balances())["BTC"]
    assert after.total == before.total
    assert after.used == before.used + Decimal("0.4")
    assert after.free == after.total - after.used


async def test_a_post_only_sell_at_the_bid_is_rejected(venue: venues.Venue) -> None:
    await venue.fund("BTC", Decimal("1"))
    bid = (await venue.exchange.tickers([SYMBOL]))[SYMBOL].bid
    [result] = await venue.exchange.place_batch([sell(bid)])
    assert not result.placed
    assert isinstance(result.error, PostOnlyWouldTake)
    assert await venue.exchange.find_by_client_id(SYMBOL, result.request.client_order_id) is None


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
