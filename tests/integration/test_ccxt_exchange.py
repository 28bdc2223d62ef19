"""The ccxt adapter against the local Kraken server: every rule of the port, Kraken's counter,
ccxt's errors mapped into mmops', and no secret in any log line or exception text."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
import structlog

from mmops import logs
from mmops.adapters.exchanges.ccxt_exchange import CcxtExchange, rfc3339
from mmops.domain.exchange import OrderRequest
from mmops.domain.models import OrderStatus, PairStatus, Side
from mmops.domain.ratelimit import KRAKEN_TIERS, TradingCounter
from mmops.errors import (
    AuthenticationFailed,
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
from tests.kraken_server import KrakenServer, make_ccxt_exchange

pytestmark = pytest.mark.integration

BTC = "BTC/USD"
BID, ASK = Decimal("60000.0"), Decimal("60010.0")


@pytest.fixture
def server() -> Iterator[KrakenServer]:
    with KrakenServer() as s:
        s.set_quote(BTC, BID, ASK)
        yield s
        assert s.stats.errors == []


@pytest.fixture
async def exchange(server: KrakenServer) -> AsyncIterator[CcxtExchange]:
    async with make_ccxt_exchange(server) as ex:
        yield ex


def cid() -> str:
    return str(uuid.uuid4())


def sell(price: Decimal | str, amount: str = "0.01", symbol: str = BTC) -> OrderRequest:
    return OrderRequest(symbol, Side.SELL, Decimal(amount), Decimal(price), cid())


def asks(count: int, start: int = 10) -> list[Decimal]:
    """Prices a post-only sell rests at, a tick apart above the ask."""
    return [ASK + Decimal("0.1") * (start + i) for i in range(count)]


async def test_markets_carry_krakens_rules_as_decimals(exchange: CcxtExchange) -> None:
    markets = await exchange.markets()
    assert len(markets) == 12
    btc, doge = markets[BTC], markets["DOGE/USD"]
    assert (btc.base, btc.quote, btc.tick, btc.lot) == (
        "BTC",
        "USD",
        Decimal("0.1"),
        Decimal("1e-8"),
    )
    assert (btc.min_amount, btc.min_cost) == (Decimal("0.0001"), Decimal("0.5"))
    assert (btc.maker_fee, btc.taker_fee) == (Decimal("0.0025"), Decimal("0.004"))
    assert (doge.tick, doge.min_amount) == (Decimal("1e-7"), Decimal("20"))


async def test_markets_and_tickers_are_cached_and_balances_are_not(server: KrakenServer) -> None:
    async with make_ccxt_exchange(server, ticker_ttl=0.3) as exchange:
        await exchange.markets()
        await exchange.markets()
        first = await exchange.tickers([BTC])
        server.set_quote(BTC, "59000.0", "59010.0")
        assert await exchange.tickers([BTC]) == first
        await asyncio.sleep(0.35)
        assert (await exchange.tickers([BTC]))[BTC].bid == Decimal("59000.0")
        await exchange.balances()
        await exchange.balances()
    calls = server.stats.calls
    assert (calls["AssetPairs"], calls["Ticker"], calls["BalanceEx"]) == (1, 2, 2)


async def test_a_batch_is_one_add_order_batch_with_post_only_and_client_ids(
    server: KrakenServer, exchange: CcxtExchange
) -> None:
    server.fund("BTC", "1")
    requests = [sell(p) for p in asks(3)]
    results = await exchange.place_batch(requests)
    assert [r.request for r in results] == requests and all(r.placed for r in results)
    assert server.stats.calls["AddOrderBatch"] == 1 and server.stats.calls["AddOrder"] == 0
    for result in results:
        assert result.order is not None
        seen = server.order(result.order.id)
        assert seen["cl_ord_id"] == result.request.client_order_id
        assert "post" in seen["oflags"].split(",")
        assert Decimal(seen["descr"]["price"]) == result.request.price


async def test_a_single_order_goes_out_as_add_order(
    server: KrakenServer, exchange: CcxtExchange
) -> None:
    server.fund("BTC", "1")
    [result] = await exchange.place_batch([sell(asks(1)[0])])
    assert result.placed and server.stats.calls["AddOrder"] == 1


async def test_a_post_only_sell_at_the_bid_is_refused_as_post_only_would_take(
    server: KrakenServer, exchange: CcxtExchange
) -> None:
    server.post_only_cross = "reject"  # the reading where the engine refuses it per order
    server.fund("BTC", "1")
    [alone] = await exchange.place_batch([sell(BID)])
    in_batch = await exchange.place_batch([sell(asks(1)[0]), sell(BID)])
    assert isinstance(alone.error, PostOnlyWouldTake)
    assert in_batch[0].placed and isinstance(in_batch[1].error, PostOnlyWouldTake)


async def test_insufficient_funds_in_a_batch_fails_only_that_order(
    server: KrakenServer, exchange: CcxtExchange
) -> None:
    server.fund("BTC", "0.25")
    p = asks(3)
    results = await exchange.place_batch([sell(p[0], "0.1"), sell(p[1], "0.2"), sell(p[2], "0.1")])
    assert [r.placed for r in results] == [True, False, True]
    assert isinstance(results[1].error, InsufficientFunds)


async def test_an_order_below_the_minimum_is_refused_without_sinking_its_batch(
    server: KrakenServer, exchange: CcxtExchange
) -> None:
    server.fund("BTC", "1")
    p = asks(2)
    results = await exchange.place_batch([sell(p[0]), sell(p[1], "0.00001")])
    assert results[0].placed and isinstance(results[1].error, MinimumNotMet)
    assert server.stats.orders_received == 1  # the small one never travelled


@pytest.mark.parametrize(
    ("kraken_error", "expected"),
    [
        ("EOrder:Order minimum not met", MinimumNotMet),
        ("EOrder:Insufficient funds", InsufficientFunds),
        ("EOrder:Post only order", PostOnlyWouldTake),
        ("EOrder:Rate limit exceeded", RateLimited),
        ("EService:Unavailable", ExchangeUnavailable),
        ("EGeneral:Invalid arguments", ExchangeRejected),
        ("EService:Deadline elapsed", DeadlineRefused),
        ("EGeneral:Invalid arguments:deadline", DeadlineRefused),
    ],
)
async def test_krakens_error_strings_map_into_the_mmops_tree_alone_or_in_a_batch(
    server: KrakenServer,
    exchange: CcxtExchange,
    kraken_error: str,
    expected: type[MmopsError],
) -> None:
    server.fund("BTC", "1")
    server.reject_order(server.stats.orders_received + 1, kraken_error)
    [alone] = await exchange.place_batch([sell(asks(1)[0])])
    server.reject_order(server.stats.orders_received + 2, kraken_error)
    batch = await exchange.place_batch([sell(p) for p in asks(2, start=20)])
    assert type(alone.error) is expected and type(batch[1].error) is expected
    assert batch[0].placed
    assert isinstance(alone.error.__cause__, Exception)  # raised ... from the ccxt error


async def test_an_order_is_found_by_client_id_open_or_after_it_filled(
    server: KrakenServer, exchange: CcxtExchange
) -> None:
    server.fund("BTC", "1")
    request = sell(asks(1)[0])
    [result] = await exchange.place_batch([request])
    assert result.order is not None
    found = await exchange.find_by_client_id(BTC, request.client_order_id)
    assert found is not None and found.id == result.order.id
    assert found.status is OrderStatus.OPEN
    server.fill(result.order.id)
    filled = await exchange.find_by_client_id(BTC, request.client_order_id)
    assert filled is not None and filled.status is OrderStatus.FILLED
    assert filled.filled == request.amount
    assert await exchange.find_by_client_id(BTC, cid()) is None
    assert await exchange.find_by_client_id("ETH/USD", request.client_order_id) is None


async def test_cancel_releases_the_hold_and_a_second_cancel_is_not_found(
    server: KrakenServer, exchange: CcxtExchange
) -> None:
    server.fund("BTC", "1")
    [result] = await exchange.place_batch([sell(asks(1)[0], "0.3")])
    assert result.order is not None
    assert (await exchange.balances())["BTC"].used == Decimal("0.3")
    canceled = await exchange.cancel(BTC, result.order.id)
    assert canceled.status is OrderStatus.CANCELED
    assert (await exchange.balances())["BTC"].used == 0
    assert (await exchange.fetch_order(BTC, result.order.id)).status is OrderStatus.CANCELED
    with pytest.raises(OrderNotFound):
        await exchange.cancel(BTC, result.order.id)
    with pytest.raises(OrderNotFound):
        await exchange.fetch_order(BTC, "ONOPE1-ONOPE-ONOPE1")


async def test_balances_hold_what_open_orders_reserve(
    server: KrakenServer, exchange: CcxtExchange
) -> None:
    server.fund("BTC", "1")
    server.fund("USD", "1000")
    await exchange.place_batch([sell(p, "0.2") for p in asks(2)])
    await exchange.place_batch([OrderRequest(BTC, Side.BUY, Decimal("0.01"), BID, cid())])
    balances = await exchange.balances()
    btc, usd = balances["BTC"], balances["USD"]
    assert (btc.total, btc.used, btc.free) == (Decimal(1), Decimal("0.4"), Decimal("0.6"))
    assert (usd.total, usd.used, usd.free) == (Decimal(1000), Decimal(600), Decimal(400))


async def test_amounts_keep_every_digit_the_exchange_sends(
    server: KrakenServer, exchange: CcxtExchange
) -> None:
    server.fund("BTC", "12345678.1234567891")  # 18 significant digits: a float keeps 17
    server.fund("DOGE", "1000")
    request = OrderRequest(
        "DOGE/USD", Side.SELL, Decimal("123.45678901"), Decimal("0.1512345"), cid()
    )
    await exchange.place_batch([request])
    assert (await exchange.balances())["BTC"].total == Decimal("12345678.1234567891")
    [order] = await exchange.open_orders("DOGE/USD")
    assert (order.price, order.amount) == (request.price, request.amount)


async def test_a_timeout_after_accept_is_found_by_client_id_so_nothing_is_placed_twice(
    server: KrakenServer,
) -> None:
    server.fund("BTC", "1")
    requests = [sell(p) for p in asks(2)]
    server.timeout_after_accept(server.stats.placements + 1, delay=1.5)
    async with make_ccxt_exchange(server, timeout=0.5) as flaky:
        results = await flaky.place_batch(requests)
    assert all(isinstance(r.error, ExchangeTimeout) for r in results)
    async with make_ccxt_exchange(server) as exchange:
        for request in requests:
            found = await exchange.find_by_client_id(BTC, request.client_order_id)
            assert found is not None and found.status is OrderStatus.OPEN
    placed = [o["cl_ord_id"] for o in server.orders()]
    assert sorted(placed) == sorted(r.client_order_id for r in requests)


async def test_server_failures_map_to_exchange_unavailable(
    server: KrakenServer, exchange: CcxtExchange
) -> None:
    server.fund("BTC", "1")
    await exchange.markets()
    server.fail_private_call(server.stats.private_calls + 1, "5xx")
    with pytest.raises(ExchangeUnavailable):
        await exchange.balances()
    server.fail_private_call(server.stats.private_calls + 1, "unavailable")
    results = await exchange.place_batch([sell(p) for p in asks(2)])
    assert all(isinstance(r.error, ExchangeUnavailable) for r in results)


async def test_a_refused_key_raises_authentication_failed(server: KrakenServer) -> None:
    key, _ = server.new_key()
    _, other_secret = server.new_key()
    async with make_ccxt_exchange(server, api_key=key, api_secret=other_secret) as wrong:
        with pytest.raises(AuthenticationFailed, match="Invalid signature"):
            await wrong.balances()
        with pytest.raises(AuthenticationFailed):
            await wrong.place_batch([sell(asks(1)[0])])
    async with make_ccxt_exchange(server, api_key="unknown-key") as stranger:
        with pytest.raises(AuthenticationFailed, match="Invalid key"):
            await stranger.open_orders()


async def test_a_burst_of_100_orders_on_one_pair_waits_instead_of_being_refused() -> None:
    counter = TradingCounter(threshold=20, decay=40)
    with KrakenServer(counter=counter) as server:
        server.set_quote(BTC, BID, ASK)
        server.fund("BTC", "10")
        prices = asks(100)
        batches = [[sell(p) for p in prices[i : i + 15]] for i in range(0, 100, 15)]
        async with make_ccxt_exchange(server, counter=counter, counter_headroom=4) as exchange:
            outcomes = await asyncio.gather(*(exchange.place_batch(b) for b in batches))
        assert all(r.placed for results in outcomes for r in results)
        assert server.stats.orders_received == 100 and server.stats.orders_accepted == 100
        assert server.stats.rate_limit_refusals == 0


async def test_without_the_counter_model_the_same_burst_is_refused() -> None:
    counter = TradingCounter(threshold=20, decay=40)
    with KrakenServer(counter=counter) as server:
        server.set_quote(BTC, BID, ASK)
        server.fund("BTC", "10")
        prices = asks(45)
        unbounded = TradingCounter(threshold=1e9, decay=1)
        async with make_ccxt_exchange(server, counter=unbounded) as exchange:
            outcomes = [
                await exchange.place_batch([sell(p) for p in prices[i : i + 15]])
                for i in range(0, 45, 15)
            ]
        errors = [r.error for results in outcomes for r in results if r.error]
        assert errors and all(isinstance(e, RateLimited) for e in errors)
        assert server.stats.rate_limit_refusals > 0


@contextlib.asynccontextmanager
async def starter_pair_at_59() -> AsyncIterator[tuple[KrakenServer, CcxtExchange, list[float]]]:
    """Starter's trading counter (60, -1/s) on a simulated clock shared by the server and the
    adapter: 60 orders placed (the fourth batch waited 1 s), so the pair's counter stands at
    59 and the next 15 orders need 15 s of decay. Yields the sleeps slept from then on."""
    now = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    starter = KRAKEN_TIERS["starter"].trading
    with KrakenServer(counter=starter, monotonic=lambda: now[0]) as server:
        server.set_quote(BTC, BID, ASK)
        server.fund("BTC", "10")
        clock = {"counter": starter, "monotonic": lambda: now[0], "sleep": sleep}
        async with make_ccxt_exchange(server, **clock) as exchange:
            for start in range(0, 60, 15):
                assert all(r.placed for r in await exchange.place_batch(sells(start, 15)))
            slept.clear()
            yield server, exchange, slept
        assert server.stats.rate_limit_refusals == 0


def sells(start: int, count: int, deadline: datetime | None = None) -> list[OrderRequest]:
    return [
        OrderRequest(BTC, Side.SELL, Decimal("0.01"), price, cid(), deadline=deadline)
        for price in asks(count, start)
    ]


async def test_admit_waits_for_the_trading_counter_and_the_batch_after_it_does_not_wait() -> None:
    async with starter_pair_at_59() as (server, exchange, slept):
        await exchange.admit(BTC, 15)
        assert slept == [pytest.approx(15)]
        deadline = datetime.now(UTC) + timedelta(seconds=15)  # stamped after the wait
        results = await exchange.place_batch(sells(60, 15, deadline))
        assert all(r.placed for r in results)
        assert slept == [pytest.approx(15)]  # no second wait
        assert server.stats.orders_accepted == 75


async def test_a_batch_whose_deadline_the_counter_wait_would_pass_is_declined_unsent() -> None:
    async with starter_pair_at_59() as (server, exchange, slept):
        placements = server.stats.placements
        deadline = datetime.now(UTC) + timedelta(seconds=5)  # the counter needs 15 s
        results = await exchange.place_batch(sells(60, 15, deadline))
        assert all(isinstance(r.error, DeadlineRefused) for r in results)
        assert "not sent" in str(results[0].error)
        assert server.stats.placements == placements and slept == []
        await exchange.admit(BTC, 15)  # the declined batch charged nothing to the model
        assert slept == [pytest.approx(15)]


async def test_dry_run_places_nothing_and_answers_with_synthetic_orders(
    server: KrakenServer,
) -> None:
    server.fund("BTC", "1")
    async with make_ccxt_exchange(server, dry_run=True) as exchange:
        request = sell(asks(1)[0])
        [result] = await exchange.place_batch([request])
        below = await exchange.place_batch([sell(asks(1)[0], "0.00001")])
        assert result.order is not None
        assert result.order.id == f"dry-run-{request.client_order_id}"
        assert result.order.status is OrderStatus.OPEN
        assert isinstance(below[0].error, MinimumNotMet)
        assert await exchange.find_by_client_id(BTC, request.client_order_id) == result.order
        assert [o.id for o in await exchange.open_orders(BTC)] == [result.order.id]
        canceled = await exchange.cancel(BTC, result.order.id)
        assert canceled.status is OrderStatus.CANCELED
        assert (await exchange.balances())["BTC"].used == 0
    assert server.stats.placements == 0 and server.orders() == []


async def test_mixed_and_oversized_batches_are_refused_before_any_call(
    server: KrakenServer, exchange: CcxtExchange
) -> None:
    with pytest.raises(ValueError, match="at most 15"):
        await exchange.place_batch([sell(p) for p in asks(16)])
    with pytest.raises(ValueError, match="one pair"):
        await exchange.place_batch([sell(asks(1)[0]), sell("3100.00", symbol="ETH/USD")])
    assert server.stats.private_calls == 0


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """Every structlog event and every stdlib record (ccxt's too), at DEBUG, in one buffer."""
    out = io.StringIO()
    logs.configure("DEBUG", "json", stream=out)
    handler = logging.StreamHandler(out)
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        structlog.reset_defaults()


async def test_no_api_key_or_secret_appears_in_any_log_line_or_exception_text(
    server: KrakenServer, captured_logs: io.StringIO
) -> None:
    key, secret = server.new_key()
    _, wrong_secret = server.new_key()
    texts: list[str] = []

    def keep(error: BaseException | None) -> None:
        while error is not None:
            texts.extend([str(error), repr(error)])
            error = error.__cause__ or error.__context__

    server.fund("BTC", "1")
    log = logs.get_logger("test")
    async with make_ccxt_exchange(server, api_key=key, api_secret=secret, timeout=0.5) as ex:
        await ex.markets()
        server.fail_private_call(server.stats.private_calls + 1, "5xx")
        server.timeout_after_accept(server.stats.placements + 2, delay=1.5)
        for attempt in (ex.balances(), ex.cancel(BTC, "ONOPE1-ONOPE-ONOPE1")):
            try:
                await attempt
            except MmopsError as e:
                keep(e)
                log.error("exchange.failed", error=e, detail=repr(e))
        for results in (
            await ex.place_batch([sell(BID), sell(asks(1)[0], "5")]),
            await ex.place_batch([sell(p) for p in asks(2)]),
        ):
            for r in results:
                keep(r.error)
                log.warning("tp.rejected", error=str(r.error))
    async with make_ccxt_exchange(server, api_key=key, api_secret=wrong_secret) as wrong:
        with pytest.raises(AuthenticationFailed) as refused:
            await wrong.balances()
        keep(refused.value)
        log.error("exchange.auth", error=refused.value)
    written = captured_logs.getvalue()
    assert "tp.rejected" in written and "exchange.auth" in written
    assert any("Invalid signature" in t for t in texts)
    assert any("ExchangeTimeout" in t for t in texts)
    for leaked in (key, secret, wrong_secret):
        assert leaked not in written
        assert not any(leaked in t for t in texts)


RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def test_a_deadline_is_written_as_rfc3339_in_utc_cut_to_the_millisecond() -> None:
    plus_two = timezone(timedelta(hours=2))
    moment = datetime(2026, 11, 26, 8, 30, 15, 123999, tzinfo=plus_two)
    assert rfc3339(moment) == "2026-11-26T06:30:15.123Z"
    assert rfc3339(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05.000Z"


async def test_an_order_carries_its_deadline_to_add_order(
    server: KrakenServer, exchange: CcxtExchange
) -> None:
    server.fund("BTC", "1")
    deadline = datetime.now(UTC) + timedelta(seconds=20)
    request = OrderRequest(BTC, Side.SELL, Decimal("0.01"), asks(1)[0], cid(), deadline=deadline)
    [result] = await exchange.place_batch([request])
    assert result.placed
    [sent] = server.stats.placement_params
    assert sent["deadline"] == rfc3339(deadline) and RFC3339_MS.match(sent["deadline"])


async def test_a_batch_carries_one_top_level_deadline_the_earliest_of_its_orders(
    server: KrakenServer, exchange: CcxtExchange
) -> None:
    server.fund("BTC", "1")
    now = datetime.now(UTC)
    deadlines = [now + timedelta(seconds=s) for s in (30, 10, 20)]
    requests = [
        OrderRequest(BTC, Side.SELL, Decimal("0.01"), price, cid(), deadline=d)
        for price, d in zip(asks(3), deadlines, strict=True)
    ]
    results = await exchange.place_batch(requests)
    assert all(r.placed for r in results)
    [sent] = server.stats.placement_params
    assert sent["deadline"] == rfc3339(deadlines[1])
    assert all("deadline" not in order for order in sent["orders"])


async def test_orders_without_a_deadline_send_none(
    server: KrakenServer, exchange: CcxtExchange
) -> None:
    server.fund("BTC", "1")
    await exchange.place_batch([sell(asks(1)[0])])
    await exchange.place_batch([sell(p) for p in asks(2, start=20)])
    assert [("deadline" in sent) for sent in server.stats.placement_params] == [False, False]


@pytest.mark.parametrize("count", [1, 2], ids=["add-order", "add-order-batch"])
async def test_a_late_request_is_refused_as_deadline_refused_and_no_order_is_left(
    server: KrakenServer, exchange: CcxtExchange, count: int
) -> None:
    server.fund("BTC", "1")
    deadline = datetime.now(UTC) + timedelta(seconds=5)
    requests = [
        OrderRequest(BTC, Side.SELL, Decimal("0.01"), price, cid(), deadline=deadline)
        for price in asks(count)
    ]
    server.advance(6)
    results = await exchange.place_batch(requests)
    assert all(isinstance(r.error, DeadlineRefused) for r in results)
    assert "Deadline elapsed" in str(results[0].error)
    assert server.stats.orders_accepted == 0 and server.orders() == []


# -- Kraken as documented: pair modes, tick_size, BalanceEx, fee currency, pacing -------------


async def test_a_restricted_pair_is_listed_with_its_mode_and_its_tick_size(
    server: KrakenServer, exchange: CcxtExchange
) -> None:
    server.set_pair(BTC, status="post_only", tick_size="0.5")
    server.set_pair("ETH/USD", status="cancel_only")
    markets = await exchange.markets()
    assert (markets[BTC].status, markets[BTC].tick) == (PairStatus.POST_ONLY, Decimal("0.5"))
    assert markets["ETH/USD"].status is PairStatus.CANCEL_ONLY


async def test_a_take_profit_on_a_post_only_pair_is_placed_and_none_on_cancel_only(
    server: KrakenServer, exchange: CcxtExchange
) -> None:
    server.fund("BTC", "1")
    server.set_pair(BTC, status="post_only")
    [placed] = await exchange.place_batch([sell(asks(1)[0])])
    assert placed.placed
    server.set_pair(BTC, status="cancel_only")
    fresh = make_ccxt_exchange(server)
    async with fresh:
        before = server.stats.placements
        [refused] = await fresh.place_batch([sell(asks(1, 20)[0])])
    assert isinstance(refused.error, ExchangeRejected) and "cancel_only" in str(refused.error)
    assert server.stats.placements == before  # refused before sending: nothing on the wire


async def test_free_balance_is_krakens_formula_with_rewards_counted_toward_their_asset(
    server: KrakenServer, exchange: CcxtExchange
) -> None:
    """available = balance + credit - credit_used - hold_trade; XBT.F spends as BTC."""
    server.fund("BTC", "1")
    server.fund("BTC.F", "0.25")
    server.fund("USD", "1000")
    server.set_credit("USD", "500", "200")
    server.fund("BTC", "0")  # the account holds BTC and XBT.F; nothing files as BTC.F
    await exchange.place_batch([sell(asks(1)[0], "0.5")])
    balances = await exchange.balances()
    assert "BTC.F" not in balances and "XBT.F" not in balances
    btc, usd = balances["BTC"], balances["USD"]
    assert (btc.total, btc.used, btc.free) == (Decimal("1.25"), Decimal("0.5"), Decimal("0.75"))
    assert usd.free == Decimal(1000 + 500 - 200)


async def test_take_profits_pin_the_fee_to_the_quote_currency_on_the_wire(
    server: KrakenServer, exchange: CcxtExchange
) -> None:
    server.fund("BTC", "1")
    await exchange.place_batch([sell(asks(1)[0])])
    await exchange.place_batch([sell(p) for p in asks(2, 30)])
    single, batch = server.stats.placement_params
    assert set(single["oflags"].split(",")) == {"post", "fciq"}
    assert all(set(o["oflags"].split(",")) == {"post", "fciq"} for o in batch["orders"])


async def test_throttled_is_temporary(server: KrakenServer, exchange: CcxtExchange) -> None:
    server.fail_private_call(server.stats.private_calls + 1, "throttled")
    with pytest.raises(RateLimited, match="Throttled"):
        await exchange.balances()


async def test_pacing_waits_on_the_tiers_rest_counter_and_never_sends_a_call_past_it() -> None:
    """Starter: 15 calls at once, then one per 3 s; the waits are slept on a simulated clock
    the server's counter decays by, so no call is refused and the test takes no time."""
    now = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    with KrakenServer(rest_tier="starter", monotonic=lambda: now[0]) as server:
        async with make_ccxt_exchange(server, sleep=sleep) as exchange:
            for _ in range(20):
                await exchange.balances()
    assert server.stats.rest_refusals == 0
    assert server.stats.calls["BalanceEx"] == 20
    assert server.stats.rest_peak <= 15
    assert sum(slept) == pytest.approx(6 * 3, abs=0.1)  # 14 at once (1 of headroom), then 3 s each


async def test_order_calls_are_not_held_back_by_the_rest_counter() -> None:
    now = [0.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    with KrakenServer(rest_tier="starter", monotonic=lambda: now[0]) as server:
        server.set_quote(BTC, BID, ASK)
        server.fund("BTC", "1")
        async with make_ccxt_exchange(server, sleep=sleep) as exchange:
            for _ in range(14):
                await exchange.balances()
            at = now[0]
            results = await exchange.place_batch([sell(p) for p in asks(3)])
            assert all(r.placed for r in results)
            assert now[0] == at  # no wait: AddOrderBatch costs nothing on the REST counter
    assert server.stats.rest_refusals == 0


def test_the_trading_counter_follows_the_configured_tier() -> None:
    pro = CcxtExchange("kraken", tier="pro")
    assert pro._counters.counter == KRAKEN_TIERS["pro"].trading
    assert pro._rest.counter == KRAKEN_TIERS["pro"].rest
    assert pro._client.enableRateLimit is False  # the model paces, not ccxt's 1 s per unit
    with pytest.raises(ValueError, match="tier"):
        CcxtExchange("kraken", tier="gold")


async def close_orders(server: KrakenServer, exchange: CcxtExchange, count: int) -> list[str]:
    """Place ``count`` sells with fresh client ids and fill each; returns their txids."""
    server.fund("BTC", Decimal("0.01") * count)
    txids: list[str] = []
    prices = asks(15)
    for first in range(0, count, 15):
        size = min(15, count - first)
        results = await exchange.place_batch([sell(p) for p in prices[:size]])
        for r in results:
            assert r.order is not None
            server.fill(r.order.id)
            txids.append(r.order.id)
    return txids


@pytest.fixture
def unfiltered() -> Iterator[KrakenServer]:
    """A server that ignores ClosedOrders' ``cl_ord_id`` filter, with room for bursts."""
    counter = TradingCounter(threshold=10_000)
    with KrakenServer(counter=counter, closed_cl_ord_id_filter=False) as s:
        s.set_quote(BTC, BID, ASK)
        yield s
        assert s.stats.errors == []


async def test_a_closed_order_past_the_first_page_is_found_by_paging_newest_first(
    unfiltered: KrakenServer,
) -> None:
    async with make_ccxt_exchange(unfiltered) as exchange:
        unfiltered.fund("BTC", "0.01")
        request = sell(asks(1)[0])
        [result] = await exchange.place_batch([request])
        assert result.order is not None
        unfiltered.fill(result.order.id)
        unfiltered.advance(1)
        await close_orders(unfiltered, exchange, 60)  # the order now sits at offset 60
        before = unfiltered.stats.calls["ClosedOrders"]
        found = await exchange.find_by_client_id(BTC, request.client_order_id)
    assert found is not None and found.id == result.order.id
    assert found.status is OrderStatus.FILLED
    assert unfiltered.stats.calls["ClosedOrders"] - before == 2


async def test_with_120_closed_orders_of_other_ids_the_lookup_reads_every_page_and_finds_none(
    unfiltered: KrakenServer,
) -> None:
    async with make_ccxt_exchange(unfiltered) as exchange:
        await close_orders(unfiltered, exchange, 120)
        before = unfiltered.stats.calls["ClosedOrders"]
        assert await exchange.find_by_client_id(BTC, cid()) is None
    assert unfiltered.stats.calls["ClosedOrders"] - before == 3  # 50 + 50 + 20


async def test_a_lookup_that_runs_out_of_pages_is_inconclusive_not_absent(
    unfiltered: KrakenServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("mmops.adapters.exchanges.ccxt_exchange.CLOSED_PAGES", 2)
    async with make_ccxt_exchange(unfiltered) as exchange:
        unfiltered.fund("BTC", "0.01")
        request = sell(asks(1)[0])
        [result] = await exchange.place_batch([request])
        assert result.order is not None
        unfiltered.fill(result.order.id)
        unfiltered.advance(1)
        await close_orders(unfiltered, exchange, 120)
        before = unfiltered.stats.calls["ClosedOrders"]
        # The order is there, beyond the pages read: "not found" would get it placed again.
        with pytest.raises(ExchangeUnavailable, match="inconclusive"):
            await exchange.find_by_client_id(BTC, request.client_order_id)
    assert unfiltered.stats.calls["ClosedOrders"] - before == 2


async def test_where_the_server_applies_the_cl_ord_id_filter_one_page_is_enough(
    server: KrakenServer, exchange: CcxtExchange
) -> None:
    server.fund("BTC", "0.01")
    request = sell(asks(1)[0])
    [result] = await exchange.place_batch([request])
    assert result.order is not None
    server.fill(result.order.id)
    before = server.stats.calls["ClosedOrders"]
    found = await exchange.find_by_client_id(BTC, request.client_order_id)
    assert found is not None and found.id == result.order.id
    assert server.stats.calls["ClosedOrders"] - before == 1


@pytest.mark.parametrize("unknown_fails", [False, True])
async def test_an_unknown_txid_never_hides_the_orders_asked_with_it(
    server: KrakenServer, exchange: CcxtExchange, unknown_fails: bool
) -> None:
    """Kraken does not document whether QueryOrders leaves an unknown txid out or fails the
    whole call; either way the known orders of the batch are found."""
    server.fund("BTC", "1")
    placed = await exchange.place_batch([sell(p) for p in asks(3)])
    ids = [r.order.id for r in placed if r.order is not None]
    server.unknown_txid_fails = unknown_fails
    found = await exchange.fetch_orders([ids[0], "OUNKNO-WN000-TXID00", *ids[1:]])
    assert sorted(found) == sorted(ids)
