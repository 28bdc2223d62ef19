"""One contract per store port, run against the in-memory fake and the real store.

The service unit tests trust ``tests/fakes.py``; these tests are why they may: each states a
rule of a port that the services rely on, and holds for Redis (or PostgreSQL) and the fake
alike. A rule the fake gets wrong fails here, under ``[fake]``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from mmops.adapters.clock import SimulatedClock
from mmops.adapters.postgres.sessions import SessionRepository
from mmops.adapters.redis import keys
from mmops.adapters.redis.locks import Attempts, SettlementLocks
from mmops.adapters.redis.ops import OpsStore
from mmops.adapters.redis.reservations import BalanceReservations as RedisReservations
from mmops.adapters.redis.store import FillStore, OrderStore, PositionStore, SessionStore
from mmops.domain.allocation import ReservationRequest
from mmops.domain.models import (
    Fill,
    Order,
    OrderKind,
    PendingTakeProfit,
    Position,
    Session,
    SessionStatus,
    Side,
)
from mmops.domain.pnl import StopLossLevel
from mmops.domain.records import (
    Coverage,
    Fence,
    ReadResult,
    RunState,
    SessionLease,
    SettlementStatus,
    StopLossFigures,
    TakeProfitRecord,
    TpStatus,
)
from mmops.errors import LockLost, LockNotAcquired
from mmops.ports import (
    BalanceReservations,
    Fills,
    FillWriter,
    LiveSessions,
    Orders,
    Positions,
    SessionLocks,
    SessionRecords,
    SettlementRecords,
    TakeProfitClaims,
)
from tests import fakes

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
PAIR = "BTC/USD"
CLAIM_TTL = 0.2  # seconds: short enough for the real claim to lapse within a test


@dataclass
class Stores:
    """One implementation of each Redis store port, and one session id to use them with."""

    session_id: str
    fills: FillWriter
    scan: Fills
    positions: Positions
    orders: Orders
    claims: TakeProfitClaims
    locks: SessionLocks
    ops: SettlementRecords
    live: LiveSessions
    pass_time: Callable[[float], Awaitable[object]]  # let this many seconds go by
    take_lock: Callable[[], Awaitable[object]]  # what a lapsed TTL and a new holder do


@pytest.fixture(
    params=[
        "fake",
        pytest.param("redis", marks=pytest.mark.integration),
        pytest.param("cluster", marks=pytest.mark.integration),
    ]
)
def stores(request: pytest.FixtureRequest) -> Iterator[Stores]:
    """A plain fixture: it builds the real stores from the async ``redis`` fixture (or, for
    ``cluster``, a client of a local 3-master Redis Cluster) through ``getfixturevalue``,
    which an async fixture cannot call inside the running loop."""
    if request.param == "fake":
        clock = SimulatedClock(T0)
        claims, locks = fakes.FakeClaims(clock, CLAIM_TTL), fakes.FakeLocks()
        memory = fakes.MemoryStore(claims, locks)

        async def advance(seconds: float) -> object:
            return clock.advance(timedelta(seconds=seconds))

        sid = f"c-{uuid.uuid4().hex[:12]}"

        async def take_lock() -> None:
            locks.take_away(sid)

        yield Stores(
            session_id=sid,
            fills=memory,
            scan=memory,
            positions=memory,
            orders=memory,
            claims=claims,
            locks=locks,
            ops=fakes.FakeOps(),
            live=fakes.FakeLiveSessions(),
            pass_time=advance,
            take_lock=take_lock,
        )
        return
    cluster = request.param == "cluster"
    redis = request.getfixturevalue("cluster_redis" if cluster else "redis")
    session_ids = request.getfixturevalue("cluster_session_ids" if cluster else "session_ids")
    fill_store = FillStore(redis)
    session_id = session_ids.new("contract")

    async def take_redis_lock() -> None:
        await redis.set(keys.settlement_lock(session_id), "another-worker")

    yield Stores(
        session_id=session_id,
        fills=fill_store,
        scan=fill_store,
        positions=PositionStore(redis),
        orders=OrderStore(redis),
        claims=Attempts(redis, CLAIM_TTL),
        locks=SettlementLocks(redis, ttl_seconds=5),
        ops=OpsStore(redis),
        live=SessionStore(redis),
        pass_time=asyncio.sleep,
        take_lock=take_redis_lock,
    )


def buy(sid: str, order_id: str, qty: str, at: datetime, price: str = "100", **kw: str) -> Fill:
    return Fill(
        session_id=sid,
        order_id=order_id,
        symbol=kw.get("symbol", PAIR),
        side=Side(kw.get("side", "buy")),
        price=Decimal(price),
        quantity=Decimal(qty),
        fee=Decimal("0.1"),
        timestamp=at,
        trade_id=kw.get("trade_id"),
    )


def coverage(
    p: Position, order_id: str, amount: str, *, fully: bool = True, generation: int = 0
) -> Coverage:
    record = TakeProfitRecord(
        position=p.position_id,
        pair=p.symbol,
        price=Decimal("101.5"),
        amount=Decimal(amount),
        tier=60,
        markup=Decimal("0.006"),
        client_order_id=f"cid-{order_id}",
        generation=generation,
        created_at=T0 + timedelta(hours=1),
    )
    order = Order(
        session_id=p.session_id,
        order_id=order_id,
        symbol=p.symbol,
        side=Side.SELL,
        price=record.price,
        amount=record.amount,
        created_at=record.created_at,
        kind=OrderKind.TAKE_PROFIT,
        client_order_id=record.client_order_id,
    )
    return Coverage(
        position=p,
        generation=generation,
        order_id=order_id,
        amount=Decimal(amount),
        take_profit=record,
        fully_covered=fully,
        order=order,
    )


async def one(stores: Stores, position_id: str) -> Position:
    [position] = (await stores.positions.read_many(stores.session_id, [position_id])).items
    return position


async def uncovered_ids(stores: Stores) -> list[str]:
    read = await stores.positions.uncovered(stores.session_id, PAIR)
    return [p.position_id for p in read.items]


# -- Fills and Positions ---------------------------------------------------------------------


async def test_a_replayed_fill_is_recorded_once_and_grows_its_position_once(
    stores: Stores,
) -> None:
    sid = stores.session_id
    assert await stores.fills.record(buy(sid, "b1", "0.5", T0)) is True
    assert await stores.fills.record(buy(sid, "b1", "0.5", T0)) is False
    assert await stores.fills.record(buy(sid, "b1", "0.25", T0 + timedelta(seconds=1))) is True
    p = await one(stores, "b1")
    assert (p.filled, p.cost, p.fees, p.version) == (
        Decimal("0.75"),
        Decimal("75.00"),
        Decimal("0.2"),
        2,
    )
    assert p.opened_at == T0
    recorded = [f async for chunk in stores.scan.scan(sid, PAIR) for f in chunk.items]
    assert len(recorded) == 2


async def test_a_sell_fill_is_recorded_but_opens_no_position(stores: Stores) -> None:
    sid = stores.session_id
    assert await stores.fills.record(buy(sid, "s1", "0.5", T0, side="sell")) is True
    assert (await stores.positions.all(sid, PAIR)).items == []
    assert await uncovered_ids(stores) == []
    recorded = [f async for chunk in stores.scan.scan(sid, PAIR) for f in chunk.items]
    assert [f.side for f in recorded] == [Side.SELL]


async def test_uncovered_positions_come_oldest_first_and_a_limit_keeps_the_oldest(
    stores: Stores,
) -> None:
    sid = stores.session_id
    for order_id, minutes in (("b-new", 30), ("b-old", 0), ("b-mid", 10)):
        await stores.fills.record(buy(sid, order_id, "1", T0 + timedelta(minutes=minutes)))
    await stores.fills.record(buy(sid, "e1", "1", T0, symbol="ETH/USD"))
    assert await uncovered_ids(stores) == ["b-old", "b-mid", "b-new"]
    limited = await stores.positions.uncovered(sid, PAIR, limit=2)
    assert [p.position_id for p in limited.items] == ["b-old", "b-mid"]


async def test_read_many_leaves_out_unknown_ids_and_keeps_the_order_asked(stores: Stores) -> None:
    sid = stores.session_id
    await stores.fills.record(buy(sid, "b1", "1", T0))
    await stores.fills.record(buy(sid, "b2", "1", T0 + timedelta(minutes=1)))
    read = await stores.positions.read_many(sid, ["b2", "nope", "b1"])
    assert [p.position_id for p in read.items] == ["b2", "b1"]
    assert read.bad == []


async def test_full_coverage_leaves_the_uncovered_index_and_records_the_take_profit(
    stores: Stores,
) -> None:
    sid = stores.session_id
    await stores.fills.record(buy(sid, "b1", "1", T0))
    await stores.fills.record(buy(sid, "b2", "1", T0 + timedelta(minutes=1)))
    c = coverage(await one(stores, "b1"), "tp1", "1")
    await stores.positions.record_coverage([c])
    assert await uncovered_ids(stores) == ["b2"]
    p = await one(stores, "b1")
    assert (p.covered, p.uncovered, p.generation) == (Decimal("1"), Decimal("0"), 1)
    assert p.take_profits == (("tp1", Decimal("1")),)
    assert p.first_covered_at == c.take_profit.created_at
    assert await stores.positions.tp_order(sid, "tp1") == c.take_profit
    assert await stores.orders.get(sid, PAIR, "tp1") == c.order
    everything = await stores.positions.all(sid, PAIR)
    assert [q.position_id for q in everything.items] == ["b1", "b2"]


async def test_a_partial_take_profit_keeps_the_position_uncovered(stores: Stores) -> None:
    sid = stores.session_id
    await stores.fills.record(buy(sid, "b1", "1", T0))
    await stores.positions.record_coverage(
        [coverage(await one(stores, "b1"), "tp1", "0.4", fully=False)]
    )
    assert await uncovered_ids(stores) == ["b1"]
    assert (await one(stores, "b1")).uncovered == Decimal("0.6")


async def test_a_fill_since_pricing_keeps_the_position_uncovered(stores: Stores) -> None:
    sid = stores.session_id
    await stores.fills.record(buy(sid, "b1", "1", T0))
    priced = await one(stores, "b1")
    await stores.fills.record(buy(sid, "b1", "0.5", T0 + timedelta(seconds=5)))
    await stores.positions.record_coverage([coverage(priced, "tp1", "1")])
    assert await uncovered_ids(stores) == ["b1"]
    assert (await one(stores, "b1")).uncovered == Decimal("0.5")


async def test_a_new_buy_fill_puts_a_covered_position_back_among_the_uncovered(
    stores: Stores,
) -> None:
    sid = stores.session_id
    await stores.fills.record(buy(sid, "b1", "1", T0))
    await stores.positions.record_coverage([coverage(await one(stores, "b1"), "tp1", "1")])
    assert await uncovered_ids(stores) == []
    await stores.fills.record(buy(sid, "b1", "0.5", T0 + timedelta(seconds=5)))
    assert await uncovered_ids(stores) == ["b1"]


DEADLINE = T0 + timedelta(seconds=15, milliseconds=250)  # kept to the millisecond


async def fence(stores: Stores, p: Position, pending: PendingTakeProfit, **kw: object) -> set[str]:
    """Claim ``p``'s attempt, fence ``pending`` with it (a lease only when given), release."""
    tokens = await stores.claims.acquire(stores.session_id, [p.position_id])
    token = str(kw.get("token", tokens.get(p.position_id, "")))
    lease = kw.get("lease")
    assert lease is None or isinstance(lease, SessionLease)
    try:
        return await stores.positions.fence(stores.session_id, lease, [Fence(p, pending, token)])
    finally:
        await stores.claims.release(stores.session_id, tokens)


async def test_a_fenced_marker_covers_until_cleared_and_spends_its_generation(
    stores: Stores,
) -> None:
    sid = stores.session_id
    await stores.fills.record(buy(sid, "b1", "1", T0))
    pending = PendingTakeProfit(0, "cid-0", Decimal("1"), DEADLINE)
    assert await fence(stores, await one(stores, "b1"), pending) == {"b1"}
    p = await one(stores, "b1")
    assert p.pending == (pending,)
    assert (p.uncovered, p.generation) == (0, 1)
    await stores.positions.clear_pending([(p, 0)])
    p = await one(stores, "b1")
    assert (p.pending, p.uncovered) == ((), Decimal("1"))
    assert p.generation == 1  # its client id is never fenced again


async def test_the_fence_writes_nothing_without_the_attempt_or_at_a_spent_generation(
    stores: Stores,
) -> None:
    sid = stores.session_id
    await stores.fills.record(buy(sid, "b1", "1", T0))
    p = await one(stores, "b1")
    pending = PendingTakeProfit(0, "cid-0", Decimal("1"), DEADLINE)
    assert await fence(stores, p, pending, token="not-the-holder") == set()
    assert (await one(stores, "b1")).pending == ()
    assert await fence(stores, p, pending) == {"b1"}
    await stores.positions.clear_pending([(p, 0)])
    assert await fence(stores, p, pending) == set()  # the same generation, read before
    assert (await one(stores, "b1")).pending == ()


async def test_the_fence_refuses_everything_once_the_lock_is_not_the_lease_s(
    stores: Stores,
) -> None:
    sid = stores.session_id
    await stores.fills.record(buy(sid, "b1", "1", T0))
    p = await one(stores, "b1")
    pending = PendingTakeProfit(0, "cid-0", Decimal("1"), DEADLINE)
    async with stores.locks.hold(sid) as lease:
        await stores.take_lock()
        with pytest.raises(LockLost):
            await fence(stores, p, pending, lease=lease)
        assert lease.lost
    after = await one(stores, "b1")
    assert (after.pending, after.generation) == ((), 0)


async def test_a_session_s_locks_are_taken_all_or_none_and_the_fence_checks_the_part_s(
    stores: Stores,
) -> None:
    sid = stores.session_id
    await stores.fills.record(buy(sid, "b1", "1", T0))
    p = await one(stores, "b1")
    async with stores.locks.hold(sid, "g1"):  # a group's run
        with pytest.raises(LockNotAcquired):  # the whole session's part waits for it
            async with stores.locks.hold_all(sid, ("", "g0", "g1"), wait=0):
                pass
        async with stores.locks.hold(sid, "g0") as group:  # not taken by the failed try
            assert group.scope == "g0"
            async with stores.locks.hold(sid):  # nor was the session's own
                pass
    async with stores.locks.hold_all(sid, ("g1", "", "g0"), wait=0) as whole:
        assert whole.scope == ""  # the session's own lock: the one the fence checks
        for scope in ("", "g0", "g1"):
            with pytest.raises(LockNotAcquired):
                async with stores.locks.hold(sid, scope):
                    pass
        pending = PendingTakeProfit(0, "cid-0", Decimal("1"), DEADLINE)
        assert await fence(stores, p, pending, lease=whole) == {"b1"}
    async with stores.locks.hold_all(sid, ("", "g0", "g1"), wait=0):  # all released
        pass


async def test_recording_coverage_clears_the_pending_marker_of_its_generation_only(
    stores: Stores,
) -> None:
    sid = stores.session_id
    await stores.fills.record(buy(sid, "b1", "1", T0))
    first = PendingTakeProfit(0, "cid-0", Decimal("0.5"), DEADLINE)
    assert await fence(stores, await one(stores, "b1"), first) == {"b1"}
    second = PendingTakeProfit(1, "c1", Decimal("0.5"), DEADLINE)
    assert await fence(stores, await one(stores, "b1"), second) == {"b1"}
    p = await one(stores, "b1")
    await stores.positions.record_coverage([coverage(p, "tp1", "0.5", fully=False)])
    p = await one(stores, "b1")
    assert [m.generation for m in p.pending] == [1]
    assert p.generation == 2


async def test_release_keeps_what_the_take_profit_sold_and_the_position_is_uncovered_again(
    stores: Stores,
) -> None:
    sid = stores.session_id
    await stores.fills.record(buy(sid, "b1", "1", T0))
    await stores.positions.record_coverage([coverage(await one(stores, "b1"), "tp1", "1")])
    covered = await one(stores, "b1")
    await stores.positions.release_coverage(covered, "tp1", TpStatus.REPLACED, Decimal("0.3"))
    p = await one(stores, "b1")
    assert p.take_profits == (("tp1", Decimal("0.3")),)
    assert p.uncovered == Decimal("0.7")
    assert await uncovered_ids(stores) == ["b1"]
    record = await stores.positions.tp_order(sid, "tp1")
    assert record is not None and record.status is TpStatus.REPLACED
    await stores.positions.release_coverage(p, "tp1", TpStatus.REPLACED)
    assert (await one(stores, "b1")).take_profits == ()


async def test_an_exit_closes_quantity_and_leaves_the_uncovered_index(stores: Stores) -> None:
    sid = stores.session_id
    await stores.fills.record(buy(sid, "b1", "1", T0))
    await stores.positions.record_exit(await one(stores, "b1"), "x1", Decimal("1"))
    p = await one(stores, "b1")
    assert (p.closed, p.uncovered) == (Decimal("1"), Decimal("0"))
    assert await uncovered_ids(stores) == []


async def test_a_take_profit_status_is_set_only_on_a_recorded_take_profit(
    stores: Stores,
) -> None:
    sid = stores.session_id
    await stores.fills.record(buy(sid, "b1", "1", T0))
    await stores.positions.record_coverage([coverage(await one(stores, "b1"), "tp1", "1")])
    await stores.positions.set_tp_status(sid, "tp1", TpStatus.FILLED)
    await stores.positions.set_tp_status(sid, "tp-unknown", TpStatus.FILLED)
    record = await stores.positions.tp_order(sid, "tp1")
    assert record is not None and record.status is TpStatus.FILLED
    assert await stores.positions.tp_order(sid, "tp-unknown") is None
    read = await stores.positions.tp_orders(sid, ["tp-unknown", "tp1"])
    assert [(oid, r.status) for oid, r in read.items] == [("tp1", TpStatus.FILLED)]


async def test_an_amend_reprices_the_record_in_place_and_counts_itself(stores: Stores) -> None:
    sid = stores.session_id
    await stores.fills.record(buy(sid, "b1", "1", T0))
    await stores.positions.record_coverage([coverage(await one(stores, "b1"), "tp1", "1")])
    before = await stores.positions.tp_order(sid, "tp1")
    assert before is not None and before.amends == 0
    for _ in range(2):
        await stores.positions.amend_tp(sid, "tp1", Decimal("101.5"), 60, Decimal("0.006"))
    await stores.positions.amend_tp(sid, "tp-unknown", Decimal("1"), 60, Decimal("0.006"))
    after = await stores.positions.tp_order(sid, "tp1")
    assert after is not None
    assert (after.price, after.tier, after.markup, after.amends) == (
        Decimal("101.5"), 60, Decimal("0.006"), 2,
    )  # fmt: skip
    assert (after.generation, after.status) == (before.generation, before.status)
    assert await stores.positions.tp_order(sid, "tp-unknown") is None


# -- TakeProfitClaims ------------------------------------------------------------------------


async def test_a_claimed_position_cannot_be_claimed_again_until_released(stores: Stores) -> None:
    sid = stores.session_id
    first = await stores.claims.acquire(sid, ["p1", "p2"])
    assert set(first) == {"p1", "p2"}
    second = await stores.claims.acquire(sid, ["p2", "p3"])
    assert set(second) == {"p3"}
    await stores.claims.release(sid, {"p2": first["p2"]})
    assert set(await stores.claims.acquire(sid, ["p1", "p2"])) == {"p2"}


async def test_only_the_token_that_claimed_a_position_releases_it(stores: Stores) -> None:
    sid = stores.session_id
    mine = await stores.claims.acquire(sid, ["p1"])
    await stores.claims.release(sid, {"p1": "not-" + mine["p1"]})
    assert await stores.claims.acquire(sid, ["p1"]) == {}


async def test_a_claim_lapses_after_its_ttl(stores: Stores) -> None:
    sid = stores.session_id
    stale = await stores.claims.acquire(sid, ["p1"])
    await stores.pass_time(CLAIM_TTL * 2)
    fresh = await stores.claims.acquire(sid, ["p1"])
    assert set(fresh) == {"p1"}
    await stores.claims.release(sid, stale)  # the lapsed holder cannot free the new claim
    assert await stores.claims.acquire(sid, ["p1"]) == {}


async def test_claiming_reads_the_positions_claimed_as_they_are_and_only_those(
    stores: Stores,
) -> None:
    sid = stores.session_id
    for pid in ("b1", "b2", "b3"):
        await stores.fills.record(buy(sid, pid, "1", T0))
    await stores.positions.record_coverage([coverage(await one(stores, "b2"), "tp2", "0.4")])
    other = await stores.claims.acquire(sid, ["b3"])
    tokens, read = await stores.claims.acquire_reading(sid, ["b1", "b2", "b3", "b4"])
    assert set(tokens) == {"b1", "b2", "b4"}  # b3 is another worker's; b4 has no record
    assert [p.position_id for p in read.items] == ["b1", "b2"]
    assert read.items == (await stores.positions.read_many(sid, ["b1", "b2"])).items
    assert read.items[1].covered == Decimal("0.4") and read.bad == []
    # What was claimed is held: nobody else claims it, and the holder's tokens fence it.
    assert await stores.claims.acquire_reading(sid, ["b1", "b2"]) == ({}, ReadResult())
    pending = PendingTakeProfit(0, "cid-0", Decimal("1"), DEADLINE)
    fenced = await stores.positions.fence(sid, None, [Fence(read.items[0], pending, tokens["b1"])])
    assert fenced == {"b1"}
    await stores.claims.release(sid, tokens)
    await stores.claims.release(sid, other)
    assert set(await stores.claims.acquire(sid, ["b1", "b2", "b3"])) == {"b1", "b2", "b3"}


# -- SessionLocks ----------------------------------------------------------------------------


async def test_a_held_session_refuses_a_second_holder_and_is_free_after(stores: Stores) -> None:
    sid = stores.session_id
    async with stores.locks.hold(sid):
        with pytest.raises(LockNotAcquired):
            async with stores.locks.hold(sid):
                pass
    async with stores.locks.hold(sid):
        pass


async def test_a_session_lock_is_released_when_its_block_raises(stores: Stores) -> None:
    sid = stores.session_id
    with pytest.raises(RuntimeError):
        async with stores.locks.hold(sid):
            raise RuntimeError("the run failed")
    async with stores.locks.hold(sid):
        pass


# -- SettlementRecords -----------------------------------------------------------------------


def status(state: RunState, stoploss: StopLossFigures | None) -> SettlementStatus:
    return SettlementStatus(
        state=state,
        placed=3,
        skipped=1,
        failed=0,
        errors=("BTC/USD b1: InsufficientFunds",),
        duration_ms=42,
        finished_at=T0 + timedelta(minutes=3, microseconds=5),
        worker="w1",
        dry_run=False,
        stoploss=stoploss,
    )


async def test_a_settlement_status_reads_back_as_written_and_the_next_replaces_it_whole(
    stores: Stores,
) -> None:
    sid = stores.session_id
    assert await stores.ops.settlement_status(sid) is None
    figures = StopLossFigures(Decimal("900"), Decimal("1000"), Decimal("0.1"), StopLossLevel.HALT)
    await stores.ops.write_settlement_status(sid, status(RunState.PARTIAL, figures))
    assert await stores.ops.settlement_status(sid) == status(RunState.PARTIAL, figures)
    await stores.ops.write_settlement_status(sid, status(RunState.OK, None))
    assert await stores.ops.settlement_status(sid) == status(RunState.OK, None)


# -- LiveSessions ----------------------------------------------------------------------------


async def test_a_live_session_reads_back_as_saved_then_halted_then_ended(stores: Stores) -> None:
    sid = stores.session_id
    session = Session(sid, (PAIR, "ETH/USD"), T0, capital=Decimal("10000.5"))
    assert await stores.live.get(sid) is None
    await stores.live.save(session)
    assert await stores.live.get(sid) == session
    await stores.live.set_status(sid, SessionStatus.HALTED)
    halted = await stores.live.get(sid)
    assert halted is not None and halted.status is SessionStatus.HALTED
    await stores.live.end(sid, T0 + timedelta(hours=1))
    ended = await stores.live.get(sid)
    assert ended is not None
    assert (ended.status, ended.ended_at) == (SessionStatus.ENDED, T0 + timedelta(hours=1))


# -- SessionRecords (PostgreSQL) -------------------------------------------------------------


@pytest.fixture(params=["fake", pytest.param("postgres", marks=pytest.mark.integration)])
def records(request: pytest.FixtureRequest) -> tuple[SessionRecords, str]:
    """The registry and a prefix for session ids of this test's own. The tests delete their
    rows again (:func:`forget`): the run's database is shared, and a session left running
    would show in other tests' "recent sessions"."""
    prefix = f"c-{uuid.uuid4().hex[:10]}"
    if request.param == "fake":
        return fakes.FakeSessionRecords(), prefix
    return SessionRepository(request.getfixturevalue("pool")), prefix


async def forget(repo: SessionRecords, ids: list[str]) -> None:
    if isinstance(repo, SessionRepository):
        for session_id in ids:
            await repo.delete(session_id)


async def test_a_session_record_reads_back_and_ending_keeps_its_other_fields(
    records: tuple[SessionRecords, str],
) -> None:
    repo, prefix = records
    session = Session(f"{prefix}-0", (PAIR,), T0, capital=Decimal("5000"))
    await repo.upsert(session)
    try:
        await _reads_back_and_ends(repo, session)
    finally:
        await forget(repo, [session.id])


async def _reads_back_and_ends(repo: SessionRecords, session: Session) -> None:
    assert await repo.get(session.id) == session
    await repo.set_status(session.id, SessionStatus.ENDED, T0 + timedelta(hours=2))
    ended = await repo.get(session.id)
    assert ended is not None
    assert (ended.status, ended.ended_at, ended.pairs) == (
        SessionStatus.ENDED,
        T0 + timedelta(hours=2),
        (PAIR,),
    )
    await repo.set_status(session.id, SessionStatus.HALTED)
    halted = await repo.get(session.id)
    assert halted is not None and halted.ended_at == T0 + timedelta(hours=2)


async def test_recent_sessions_are_newest_first_and_old_ended_ones_are_left_out(
    records: tuple[SessionRecords, str],
) -> None:
    repo, prefix = records
    now = datetime(2999, 1, 10, tzinfo=UTC)  # later than any other test's sessions
    old_end = now - timedelta(days=2)
    rows = [
        Session(f"{prefix}-0", (PAIR,), now - timedelta(hours=1)),
        Session(f"{prefix}-1", (PAIR,), now - timedelta(hours=2)),
        Session(f"{prefix}-2", (PAIR,), now - timedelta(days=3), ended_at=old_end),
        Session(f"{prefix}-3", (PAIR,), now - timedelta(hours=3)),
    ]
    try:
        for row in rows:
            await repo.upsert(row)
        recent = await repo.recent(hours_back=24, limit=3, now=now)
        assert [s.id for s in recent] == [f"{prefix}-0", f"{prefix}-1", f"{prefix}-3"]
        latest = await repo.recent(hours_back=24, limit=1, now=now)
        assert [s.id for s in latest] == [f"{prefix}-0"]
    finally:
        await forget(repo, [row.id for row in rows])


# -- BalanceReservations: one account's ledger ---------------------------------------------

TTL = timedelta(seconds=30)  # the real key expires by itself (twice the TTL) after the test


@pytest.fixture(
    params=[
        "fake",
        pytest.param("redis", marks=pytest.mark.integration),
        pytest.param("cluster", marks=pytest.mark.integration),
    ]
)
def ledger(request: pytest.FixtureRequest) -> tuple[BalanceReservations, str]:
    """A ledger and an account name of this test's own (on one server or a cluster)."""
    account = f"contract:{uuid.uuid4().hex[:12]}"
    if request.param == "fake":
        return fakes.FakeReservations(), account
    client = "cluster_redis" if request.param == "cluster" else "redis"
    return RedisReservations(request.getfixturevalue(client)), account


def ask(
    account: str,
    rid: str,
    amount: str,
    free: str = "1.0",
    *,
    asset: str = "BTC",
    snapshot: datetime = T0,
    now: datetime = T0,
    owner: str = "w1",
) -> ReservationRequest:
    return ReservationRequest(account, asset, rid, Decimal(amount), Decimal(free), snapshot,
                              now, TTL, owner)  # fmt: skip


async def test_a_reservation_is_all_or_nothing_and_pending_ones_count_for_everyone(
    ledger: tuple[BalanceReservations, str],
) -> None:
    store, account = ledger
    assert (await store.reserve(ask(account, "r1", "0.6"))).granted
    refused = await store.reserve(ask(account, "r2", "0.6", owner="w2"))
    again = await store.reserve(ask(account, "r3", "0.6"))  # its own pending counts too
    assert (refused.granted, refused.available) == (False, Decimal("0.4"))
    assert not again.granted
    assert (await store.reserve(ask(account, "r4", "0.4", owner="w2"))).granted
    assert (await store.reserve(ask(account, "r5", "1", asset="ETH"))).granted  # its own asset


async def test_a_placed_reservation_counts_only_for_other_owners_older_snapshots(
    ledger: tuple[BalanceReservations, str],
) -> None:
    store, account = ledger
    assert (await store.reserve(ask(account, "r1", "0.8"))).granted
    placed_at = T0 + timedelta(seconds=5)
    await store.placed(account, "r1", Decimal("0.5"), placed_at, TTL)  # 0.3 was not sent
    later = T0 + timedelta(seconds=10)

    older = await store.reserve(ask(account, "a", "0.6", now=later, owner="w2"))
    newer = await store.reserve(ask(account, "b", "0.6", snapshot=later, now=later, owner="w3"))
    own = await store.reserve(ask(account, "c", "0.4", now=later, owner="w1"))

    assert (older.granted, older.available) == (False, Decimal("0.5"))
    assert newer.granted  # a snapshot after the placement already shows the order
    assert (own.granted, own.available) == (True, Decimal("0.4"))  # less w3's pending 0.6


async def test_a_reservation_expires_after_its_ttl_and_release_or_nothing_placed_drops_it(
    ledger: tuple[BalanceReservations, str],
) -> None:
    store, account = ledger
    assert (await store.reserve(ask(account, "dead", "1.0"))).granted
    after = T0 + TTL + timedelta(seconds=1)
    assert (await store.reserve(ask(account, "r1", "0.5", now=after, owner="w2"))).granted
    assert (await store.reserve(ask(account, "r2", "0.5", now=after, owner="w2"))).granted
    await store.release(account, "r1")
    await store.placed(account, "r2", Decimal(0), after, TTL)
    await store.placed(account, "unknown", Decimal(1), after, TTL)  # a no-op
    assert (await store.reserve(ask(account, "r3", "1.0", now=after, owner="w3"))).granted
