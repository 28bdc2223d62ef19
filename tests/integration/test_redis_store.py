"""The Redis store against a real Redis: round trips, idempotent fills, the uncovered index."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from mmops.adapters.redis import keys
from mmops.adapters.redis.client import Redis, create_client
from mmops.adapters.redis.locks import Attempts
from mmops.adapters.redis.ops import OpsStore
from mmops.adapters.redis.store import (
    FillStore,
    OrderStore,
    PositionStore,
    SessionStore,
)
from mmops.domain.models import (
    Fill,
    Order,
    OrderKind,
    OrderStatus,
    PendingTakeProfit,
    Session,
    SessionStatus,
    Side,
)
from mmops.domain.pnl import StopLossLevel
from mmops.domain.records import (
    Coverage,
    Fence,
    RunState,
    SettlementStatus,
    StopLossFigures,
    TakeProfitRecord,
    TpStatus,
)
from mmops.errors import BadRecordError, InvalidIdentifier
from tests.conftest import SessionIds

pytestmark = pytest.mark.integration

# Round-trip counts hook one server's connection pool; on a cluster (MMOPS_TEST_REDIS_CLUSTER=1)
# the client has one pool per node, and the cluster tests check the same code paths' results.
single_server = pytest.mark.skipif(
    os.environ.get("MMOPS_TEST_REDIS_CLUSTER") == "1", reason="counts one server's round trips"
)

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def take_profit(position: str, amount: str = "1") -> TakeProfitRecord:
    """A take-profit's metadata as settlement records it (tests name only what they check)."""
    return TakeProfitRecord(
        position=position,
        pair="BTC/USD",
        price=Decimal("11"),
        amount=Decimal(amount),
        tier=0,
        markup=Decimal("0.01"),
        client_order_id="cid-0",
        generation=0,
        created_at=T0,
        status=TpStatus.OPEN,
    )


def buy_fill(sid: str, order_id: str, qty: str, price: str, at: datetime, **kw: Any) -> Fill:
    return Fill(
        session_id=sid,
        order_id=order_id,
        symbol=kw.pop("symbol", "BTC/USD"),
        side=Side.BUY,
        price=Decimal(price),
        quantity=Decimal(qty),
        fee=Decimal(kw.pop("fee", "0.1")),
        timestamp=at,
        **kw,
    )


async def test_session_round_trip(redis: Redis, session_ids: SessionIds) -> None:
    store = SessionStore(redis)
    sid = session_ids.new()
    session = Session(sid, ("BTC/USD", "ETH/USD"), T0, capital=Decimal("10000.50"))
    await store.save(session)
    assert await store.get(sid) == session
    await store.set_status(sid, SessionStatus.HALTED)
    got = await store.get(sid)
    assert got is not None and got.status is SessionStatus.HALTED
    await store.end(sid, T0 + timedelta(hours=1))
    got = await store.get(sid)
    assert got is not None and got.status is SessionStatus.ENDED
    assert got.ended_at == T0 + timedelta(hours=1)
    assert sid in await store.ids()


async def test_order_round_trip_and_update(redis: Redis, session_ids: SessionIds) -> None:
    store = OrderStore(redis)
    sid = session_ids.new()
    order = Order(sid, "o1", "BTC/USD", Side.BUY, Decimal("50000.1"), Decimal("0.01"), T0)
    await store.save(order)
    assert await store.get(sid, "BTC/USD", "o1") == order
    filled = Order(
        sid,
        "o1",
        "BTC/USD",
        Side.BUY,
        Decimal("50000.1"),
        Decimal("0.01"),
        T0,
        status=OrderStatus.FILLED,
        filled=Decimal("0.01"),
    )
    await store.save(filled)
    assert await store.get(sid, "BTC/USD", "o1") == filled
    assert await store.count(sid, "BTC/USD") == 1


async def test_same_fill_recorded_twice_counts_once(redis: Redis, session_ids: SessionIds) -> None:
    sid = session_ids.new()
    fills, positions = FillStore(redis), PositionStore(redis)
    fill = buy_fill(sid, "b1", "0.5", "100", T0)
    assert await fills.record(fill) is True
    assert await fills.record(fill) is False
    # The same execution replayed with a normalised-equal amount is the same fill.
    assert await fills.record(buy_fill(sid, "b1", "0.50", "100.0", T0)) is False
    assert await fills.count(sid, "BTC/USD") == 1
    position = await positions.get(sid, "b1")
    assert position is not None
    assert position.filled == Decimal("0.5")
    assert position.cost == Decimal("50")
    assert position.fees == Decimal("0.1")
    assert position.version == 1


async def test_fills_with_trade_ids_dedupe_by_trade_id(
    redis: Redis, session_ids: SessionIds
) -> None:
    sid = session_ids.new()
    fills, positions = FillStore(redis), PositionStore(redis)
    assert await fills.record(buy_fill(sid, "b1", "1", "10", T0, trade_id="T-1"))
    assert not await fills.record(buy_fill(sid, "b1", "1", "10", T0, trade_id="T-1"))
    assert await fills.record(buy_fill(sid, "b1", "2", "11", T0, trade_id="T-2"))
    position = await positions.get(sid, "b1")
    assert position is not None
    assert (position.filled, position.cost) == (Decimal("3"), Decimal("32"))


async def test_partial_fills_grow_one_position(redis: Redis, session_ids: SessionIds) -> None:
    sid = session_ids.new()
    fills, positions = FillStore(redis), PositionStore(redis)
    await fills.record(buy_fill(sid, "b1", "0.2", "100", T0))
    await fills.record(buy_fill(sid, "b1", "0.3", "110", T0 + timedelta(minutes=1)))
    position = await positions.get(sid, "b1")
    assert position is not None
    assert position.filled == Decimal("0.5")
    assert position.cost == Decimal("53")
    assert position.opened_at == T0
    assert position.uncovered == Decimal("0.5")


async def test_sell_fill_does_not_open_a_position(redis: Redis, session_ids: SessionIds) -> None:
    sid = session_ids.new()
    fills, positions = FillStore(redis), PositionStore(redis)
    sell = Fill(sid, "s1", "BTC/USD", Side.SELL, Decimal("101"), Decimal("0.1"), Decimal("0"), T0)
    assert await fills.record(sell)
    assert await positions.get(sid, "s1") is None
    assert (await positions.uncovered(sid, "BTC/USD")).items == []


async def test_uncovered_index_is_ordered_by_age(redis: Redis, session_ids: SessionIds) -> None:
    sid = session_ids.new()
    fills, positions = FillStore(redis), PositionStore(redis)
    for order_id, minutes in (("young", 50), ("old", 1), ("middle", 20)):
        await fills.record(buy_fill(sid, order_id, "1", "10", T0 + timedelta(minutes=minutes)))
    await fills.record(buy_fill(sid, "other-pair", "1", "10", T0, symbol="ETH/USD"))
    result = await positions.uncovered(sid, "BTC/USD")
    assert [p.position_id for p in result.items] == ["old", "middle", "young"]
    assert await positions.uncovered_ids(sid, "BTC/USD", limit=2) == ["old", "middle"]


async def test_coverage_removes_from_index_and_release_restores(
    redis: Redis, session_ids: SessionIds
) -> None:
    sid = session_ids.new()
    fills, positions = FillStore(redis), PositionStore(redis)
    await fills.record(buy_fill(sid, "b1", "1", "10", T0))
    position = await positions.get(sid, "b1")
    assert position is not None
    meta = take_profit("b1", amount="1")
    await positions.record_coverage(
        [
            Coverage(
                position=position,
                generation=0,
                order_id="tp-1",
                amount=Decimal("1"),
                take_profit=meta,
                fully_covered=True,
            )
        ]
    )
    assert await positions.uncovered_ids(sid, "BTC/USD") == []
    covered = await positions.get(sid, "b1")
    assert covered is not None and covered.covered == Decimal("1") and covered.uncovered == 0
    assert (await positions.tp_order(sid, "tp-1")).position == "b1"

    await positions.release_coverage(covered, "tp-1", TpStatus.CANCELED)
    assert await positions.uncovered_ids(sid, "BTC/USD") == ["b1"]
    assert (await positions.tp_order(sid, "tp-1")).status == "canceled"


async def test_fill_arriving_after_pricing_keeps_position_uncovered(
    redis: Redis, session_ids: SessionIds
) -> None:
    """Coverage priced from an older version must not hide quantity filled since."""
    sid = session_ids.new()
    fills, positions = FillStore(redis), PositionStore(redis)
    await fills.record(buy_fill(sid, "b1", "1", "10", T0))
    priced_from = await positions.get(sid, "b1")
    assert priced_from is not None
    await fills.record(buy_fill(sid, "b1", "1", "10", T0 + timedelta(seconds=5)))
    await positions.record_coverage(
        [
            Coverage(
                position=priced_from,
                generation=0,
                order_id="tp-1",
                amount=Decimal("1"),
                take_profit=take_profit("b1"),
                fully_covered=True,
            )
        ]
    )
    assert await positions.uncovered_ids(sid, "BTC/USD") == ["b1"]
    now = await positions.get(sid, "b1")
    assert now is not None and now.uncovered == Decimal("1")


class CountingConnections:
    """Counts round trips (packed command batches sent) on a real client's connections."""

    def __init__(self, client: Redis) -> None:
        self.round_trips = 0
        pool = client.connection_pool
        base = pool.connection_class
        counter = self

        class Counting(base):  # type: ignore[misc, valid-type]
            async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
                counter.round_trips += 1
                await super().send_packed_command(command, check_health)

        pool.connection_class = Counting


@single_server  # counts round trips on one server's connection pool
async def test_thousand_positions_read_in_a_handful_of_round_trips(
    redis_url: str, redis: Redis, session_ids: SessionIds
) -> None:
    sid = session_ids.new()
    fills = FillStore(redis)
    for start in range(0, 1000, 100):
        for i in range(start, start + 100):
            await fills.record(buy_fill(sid, f"b{i:04d}", "1", "10", T0 + timedelta(seconds=i)))
    counted = create_client(redis_url)
    counter = CountingConnections(counted)
    try:
        await counted.ping()  # connection hand-shake (HELLO, SETINFO, SELECT) not counted
        counter.round_trips = 0
        result = await PositionStore(counted).uncovered(sid, "BTC/USD")
    finally:
        await counted.aclose()
    assert len(result.items) == 1000
    assert result.bad == []
    assert [p.position_id for p in result.items][:2] == ["b0000", "b0001"]
    # One ZRANGE, then one script call per 500 positions.
    assert counter.round_trips == 3, counter.round_trips


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"price": "100"}, "KeyError"),
        ({"price": "abc"}, "InvalidOperation"),
        ({"quantity": "-1"}, "quantity"),
        ({"price": "NaN"}, "finite"),
        ({"quantity": 1.5}, "decimal string"),
    ],
)
async def test_malformed_fill_is_a_typed_bad_record(
    redis: Redis, session_ids: SessionIds, payload: dict[str, Any], reason: str
) -> None:
    sid = session_ids.new()
    good = {
        "session_id": sid,
        "order_id": "b1",
        "symbol": "BTC/USD",
        "side": "buy",
        "price": "10",
        "quantity": "1",
        "fee": "0",
        "timestamp": T0.isoformat(),
    }
    record = {**good, **payload}
    if payload == {"price": "100"}:
        del record["quantity"]
    raw = json.dumps(record)
    await redis.hset(keys.fills(sid, "BTC/USD"), "bad", raw)
    await FillStore(redis).record(buy_fill(sid, "b2", "1", "10", T0))
    chunks = [chunk async for chunk in FillStore(redis).scan(sid, "BTC/USD")]
    items = [f for c in chunks for f in c.items]
    bad = [b for c in chunks for b in c.bad]
    assert [f.order_id for f in items] == ["b2"]
    assert len(bad) == 1
    assert isinstance(bad[0], BadRecordError)
    assert bad[0].key == f"{keys.fills(sid, 'BTC/USD')}#bad"
    assert bad[0].raw == raw
    assert reason in bad[0].reason


async def test_malformed_session_and_position_raise_bad_record(
    redis: Redis, session_ids: SessionIds
) -> None:
    sid = session_ids.new()
    await redis.hset(keys.session(sid), mapping={"id": sid, "pairs": "not json"})
    with pytest.raises(BadRecordError) as caught:
        await SessionStore(redis).get(sid)
    assert caught.value.key == keys.session(sid)
    await redis.hset(keys.position(sid, "p1"), mapping={"symbol": "BTC/USD", "f:x": "1|abc|0"})
    with pytest.raises(BadRecordError):
        await PositionStore(redis).get(sid, "p1")


async def test_malformed_position_in_bulk_read_is_reported_not_raised(
    redis: Redis, session_ids: SessionIds
) -> None:
    sid = session_ids.new()
    await FillStore(redis).record(buy_fill(sid, "good", "1", "10", T0))
    await redis.zadd(keys.uncovered(sid, "BTC/USD"), {"broken": 1})
    await redis.hset(keys.position(sid, "broken"), mapping={"symbol": "BTC/USD", "f:x": "-1|1|0"})
    result = await PositionStore(redis).uncovered(sid, "BTC/USD")
    assert [p.position_id for p in result.items] == ["good"]
    assert [b.key for b in result.bad] == [keys.position(sid, "broken")]


@pytest.mark.parametrize("hostile", ["a}b", "x:{y}", "sess ion", "", "a" * 65, "*"])
def test_hostile_session_ids_never_reach_a_key(hostile: str) -> None:
    with pytest.raises(InvalidIdentifier):
        keys.session(hostile)


def test_hostile_pair_never_reaches_a_key() -> None:
    with pytest.raises(InvalidIdentifier):
        keys.fills("s1", "BTC/USD'; DROP TABLE fills;--")


async def test_pending_marker_counts_as_covering_until_recorded_or_cleared(
    redis: Redis, session_ids: SessionIds
) -> None:
    sid = session_ids.new()
    fills, positions = FillStore(redis), PositionStore(redis)
    await fills.record(buy_fill(sid, "b1", "2", "10", T0))
    p = await positions.get(sid, "b1")
    assert p is not None and p.generation == 0
    # A marker written before deadlines existed still reads, and covers (its deadline: None).
    await redis.hset(keys.position(sid, "b1"), "p:0", "cid-0|2")
    p = await positions.get(sid, "b1")
    assert p is not None and p.uncovered == 0
    assert p.pending == (PendingTakeProfit(0, "cid-0", Decimal("2")),)

    await positions.clear_pending([(p, 0)])
    p = await positions.get(sid, "b1")
    assert p is not None and p.uncovered == Decimal("2") and p.pending == ()

    claims = Attempts(redis, ttl_seconds=30)
    tokens = await claims.acquire(sid, ["b1"])
    deadline = T0 + timedelta(seconds=15)
    marker = PendingTakeProfit(0, "cid-0", Decimal("2"), deadline)
    assert await positions.fence(sid, None, [Fence(p, marker, tokens["b1"])]) == {"b1"}
    assert (await positions.get(sid, "b1")) == replace(p, generation=1, pending=(marker,))
    await positions.record_coverage(
        [
            Coverage(
                position=p,
                generation=0,
                order_id="tp-9",
                amount=Decimal("2"),
                take_profit=take_profit("b1"),
                fully_covered=True,
            )
        ]
    )
    p = await positions.get(sid, "b1")
    assert p is not None
    assert (p.pending, p.generation, p.take_profits) == ((), 1, (("tp-9", Decimal("2")),))


async def test_release_keeps_what_a_cancelled_take_profit_already_sold(
    redis: Redis, session_ids: SessionIds
) -> None:
    sid = session_ids.new()
    fills, positions = FillStore(redis), PositionStore(redis)
    await fills.record(buy_fill(sid, "b1", "1", "10", T0))
    p = await positions.get(sid, "b1")
    assert p is not None
    await positions.record_coverage(
        [
            Coverage(
                position=p,
                generation=0,
                order_id="tp-1",
                amount=Decimal("1"),
                take_profit=take_profit("b1"),
                fully_covered=True,
            )
        ]
    )
    await positions.release_coverage(p, "tp-1", TpStatus.CANCELED, kept=Decimal("0.4"))
    p = await positions.get(sid, "b1")
    assert p is not None and p.covered == Decimal("0.4") and p.uncovered == Decimal("0.6")
    assert await positions.uncovered_ids(sid, "BTC/USD") == ["b1"]


async def test_take_profit_metadata_is_stored_as_the_hash_it_always_was(
    redis: Redis, session_ids: SessionIds
) -> None:
    """The record goes through the Lua script as plain fields: what is in Redis is what was
    written before records existed, and it reads back as the same record."""
    sid = session_ids.new()
    fills, positions = FillStore(redis), PositionStore(redis)
    await fills.record(buy_fill(sid, "b1", "1", "10", T0))
    p = await positions.get(sid, "b1")
    assert p is not None
    record = take_profit("b1")
    coverage = Coverage(position=p, generation=0, order_id="tp-1", amount=Decimal("1"),
                        take_profit=record, fully_covered=True)  # fmt: skip
    await positions.record_coverage([coverage])
    assert await redis.hgetall(keys.tp_order(sid, "tp-1")) == {
        "position": "b1", "pair": "BTC/USD", "price": "11", "amount": "1", "tier": "0",
        "markup": "0.01", "client_order_id": "cid-0", "generation": "0",
        "created_at": "2026-11-01T12:00:00+00:00", "status": "open",
    }  # fmt: skip
    assert await positions.tp_order(sid, "tp-1") == record
    assert await positions.tp_order(sid, "tp-2") is None
    await positions.set_tp_status(sid, "tp-1", TpStatus.FILLED)
    assert await redis.hget(keys.tp_order(sid, "tp-1"), "status") == "filled"


async def test_take_profit_metadata_that_does_not_parse_is_reported_not_raised(
    redis: Redis, session_ids: SessionIds
) -> None:
    sid = session_ids.new()
    fills, positions = FillStore(redis), PositionStore(redis)
    await fills.record(buy_fill(sid, "b1", "1", "10", T0))
    p = await positions.get(sid, "b1")
    assert p is not None
    coverages = [
        Coverage(position=p, generation=n, order_id=f"tp-{n}", amount=Decimal("0.5"),
                 take_profit=take_profit("b1", amount="0.5"), fully_covered=False)
        for n in (1, 2)
    ]  # fmt: skip
    await positions.record_coverage(coverages)
    await redis.hset(keys.tp_order(sid, "tp-2"), "tier", "a day")
    read = await positions.tp_orders(sid, ["tp-1", "tp-2", "tp-3"])
    assert read.items == [("tp-1", take_profit("b1", amount="0.5"))]
    [bad] = read.bad
    assert bad.key == keys.tp_order(sid, "tp-2") and "a day" in bad.reason
    with pytest.raises(BadRecordError):
        await positions.tp_order(sid, "tp-2")


async def test_settlement_status_replaces_the_hash_and_sets_the_last_run(
    redis: Redis, session_ids: SessionIds
) -> None:
    sid = session_ids.new()
    ops = OpsStore(redis)
    assert await ops.settlement_status(sid) is None
    figures = StopLossFigures(Decimal("950.5"), Decimal("1000"), Decimal("0.0495"),
                              StopLossLevel.WARN)  # fmt: skip
    first = SettlementStatus(state=RunState.OK, placed=3, skipped=0, failed=0, errors=(),
                             duration_ms=12, finished_at=T0, worker="w1", dry_run=False,
                             stoploss=figures)  # fmt: skip
    await ops.write_settlement_status(sid, first)
    assert await ops.settlement_status(sid) == first
    assert await redis.hgetall(keys.settlement_status(sid)) == {
        "state": "ok", "placed": "3", "skipped": "0", "failed": "0", "errors": "[]",
        "duration_ms": "12", "finished_at": "2026-11-01T12:00:00+00:00", "worker": "w1",
        "dry_run": "false", "equity": "950.5", "peak_equity": "1000", "drawdown": "0.0495",
        "stoploss_level": "warn",
    }  # fmt: skip
    later = T0 + timedelta(minutes=3)
    second = SettlementStatus(state=RunState.FAILED, placed=0, skipped=0, failed=0,
                              errors=("market data: down",), duration_ms=5, finished_at=later,
                              worker="w2", dry_run=True)  # fmt: skip
    await ops.write_settlement_status(sid, second)
    assert await ops.settlement_status(sid) == second  # the stop-loss figures went with it
    assert await ops.settlement_last_run(sid) == later.isoformat()
    await redis.hset(keys.settlement_status(sid), "state", "sideways")
    with pytest.raises(BadRecordError):
        await ops.settlement_status(sid)


@single_server
async def test_a_batch_of_take_profits_over_two_pairs_is_recorded_in_one_round_trip(
    redis_url: str, redis: Redis, session_ids: SessionIds
) -> None:
    """Each take-profit's metadata, order, coverage and index change land, every key is in
    the session's registry, and the whole batch is one script call (one round trip)."""
    sid = session_ids.new()
    fills, positions = FillStore(redis), PositionStore(redis)
    pairs = {"b1": "BTC/USD", "e1": "ETH/USD", "b2": "BTC/USD"}
    for pid, pair in pairs.items():
        await fills.record(buy_fill(sid, pid, "1", "10", T0, symbol=pair))
    coverages = []
    for n, pid in enumerate(pairs):
        [p] = (await positions.read_many(sid, [pid])).items
        record = replace(take_profit(pid, amount="0.4" if pid == "b2" else "1"), pair=p.symbol)
        cid = record.client_order_id
        order = Order(sid, f"tp-{n}", p.symbol, Side.SELL, record.price, record.amount, T0,
                      kind=OrderKind.TAKE_PROFIT, client_order_id=cid)  # fmt: skip
        coverages.append(Coverage(p, 0, f"tp-{n}", record.amount, record, pid != "b2", order))
    counted = create_client(redis_url)
    counter = CountingConnections(counted)
    try:
        await counted.ping()
        counter.round_trips = 0
        await PositionStore(counted).record_coverage(coverages)
        assert counter.round_trips == 1
    finally:
        await counted.aclose()
    assert await positions.uncovered_ids(sid, "BTC/USD") == ["b2"]  # only partly covered
    assert await positions.uncovered_ids(sid, "ETH/USD") == []
    read = await positions.read_many(sid, list(pairs))
    assert [(p.covered, p.generation, p.first_covered_at) for p in read.items] == [
        (Decimal("1"), 1, T0), (Decimal("1"), 1, T0), (Decimal("0.4"), 1, T0),
    ]  # fmt: skip
    for c in coverages:
        assert await positions.tp_order(sid, c.order_id) == c.take_profit
        assert c.order is not None
        assert await OrderStore(redis).get(sid, c.position.symbol, c.order_id) == c.order
    registered = await redis.smembers(keys.registry(sid))
    for c in coverages:
        s, p = sid, c.position
        assert {keys.tp_order(s, c.order_id), keys.position(s, p.position_id),
                keys.uncovered(s, p.symbol), keys.orders(s, p.symbol)} <= registered  # fmt: skip


@single_server
async def test_claiming_reads_in_the_same_round_trip_and_registers_the_attempts(
    redis_url: str, redis: Redis, session_ids: SessionIds
) -> None:
    sid = session_ids.new()
    fills = FillStore(redis)
    for pid in ("b1", "b2"):
        await fills.record(buy_fill(sid, pid, "1", "10", T0))
    counted = create_client(redis_url)
    counter = CountingConnections(counted)
    try:
        await counted.ping()
        counter.round_trips = 0
        tokens, read = await Attempts(counted, 5).acquire_reading(sid, ["b1", "b2", "b2"])
        assert counter.round_trips == 1
    finally:
        await counted.aclose()
    assert set(tokens) == {"b1", "b2"} and [p.position_id for p in read.items] == ["b1", "b2"]
    registered = await redis.smembers(keys.registry(sid))
    assert {keys.tp_attempt(sid, "b1"), keys.tp_attempt(sid, "b2")} <= registered
    assert await redis.get(keys.tp_attempt(sid, "b1")) == tokens["b1"]


async def test_a_claim_reads_the_position_as_it_is_when_it_changed_since_the_last_read(
    redis: Redis, session_ids: SessionIds
) -> None:
    """A position read to be priced, then filled again, is claimed in its new state: only an
    unchanged row is taken from the earlier parse."""
    sid = session_ids.new()
    fills, positions = FillStore(redis), PositionStore(redis)
    await fills.record(buy_fill(sid, "b1", "1", "10", T0))
    await fills.record(buy_fill(sid, "b2", "1", "10", T0))
    [before, same] = (await positions.read_many(sid, ["b1", "b2"])).items
    await fills.record(buy_fill(sid, "b1", "0.5", "12", T0 + timedelta(seconds=1), trade_id="t2"))
    _, read = await Attempts(redis, 5).acquire_reading(sid, ["b1", "b2"])
    [after, unchanged] = read.items
    assert (before.filled, after.filled) == (Decimal("1"), Decimal("1.5"))
    assert after.version == before.version + 1
    assert unchanged == same
