"""The ingest service on in-memory fakes: each message type validated by the domain's rules,
applied once, and anything it cannot apply quarantined with its reason."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from mmops.adapters.clock import SimulatedClock
from mmops.domain.models import OrderStatus, SessionStatus, Side
from mmops.errors import StoreUnavailable
from mmops.services.ingest import (
    IngestService,
    Rejected,
    parse_fill,
    parse_order,
    parse_session_start,
)
from mmops.services.sessions import SessionRegistry
from tests.fakes import FakeLiveSessions, FakeSessionRecords, MemoryStore

T0 = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)


class FakeStream:
    """The consumer group in memory: written messages, each consumer's pending ones, acks."""

    name = "mmops:ingest"

    def __init__(self) -> None:
        self.messages: list[tuple[str, dict[str, str]]] = []
        self.pending: dict[str, str] = {}  # message id → consumer
        self.acked: list[str] = []
        self._next = 0

    def add(self, **fields: str) -> str:
        message_id = f"{1_700_000_000_000 + len(self.messages)}-0"
        self.messages.append((message_id, fields))
        return message_id

    async def read(
        self, consumer: str, block_ms: int, count: int
    ) -> list[tuple[str, dict[str, str]]]:
        own = [m for m in self.messages if self.pending.get(m[0]) == consumer]
        if own:
            return own[:count]
        new = self.messages[self._next : self._next + count]
        self._next += len(new)
        for message_id, _ in new:
            self.pending[message_id] = consumer
        return new

    async def ack(self, message_ids: Sequence[str]) -> None:
        for message_id in message_ids:
            self.pending.pop(message_id, None)
            self.acked.append(message_id)


class FakeRejects:
    """``ingest_rejects``: one row per (stream, message id)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], tuple[str | None, dict[str, str], str]] = {}
        self.down = False

    async def record_ingest_reject(
        self,
        stream: str,
        message_id: str,
        session_id: str | None,
        raw: Mapping[str, str],
        reason: str,
        received_at: datetime,
    ) -> bool:
        if self.down:
            raise StoreUnavailable("PostgreSQL", "connection refused")
        if (stream, message_id) in self.rows:
            return False
        self.rows[(stream, message_id)] = (session_id, dict(raw), reason)
        return True

    def reasons(self) -> list[str]:
        return [reason for _, _, reason in self.rows.values()]


class Desk:
    def __init__(self) -> None:
        self.stream = FakeStream()
        self.live = FakeLiveSessions()
        self.records = FakeSessionRecords()
        self.store = MemoryStore()
        self.rejects = FakeRejects()
        self.service = IngestService(
            stream=self.stream,
            sessions=SessionRegistry(self.live, self.records),
            live=self.live,
            orders=self.store,
            fills=self.store,
            rejects=self.rejects,
            clock=SimulatedClock(T0),
        )

    async def run(self) -> None:
        await self.service.run_once("c1")


@pytest.fixture
def desk() -> Desk:
    return Desk()


START = {"type": "session_start", "session": "mm-1", "pairs": "BTC/USD,ETH/USD"}
ORDER = {
    "type": "order", "session": "mm-1", "pair": "BTC/USD", "order_id": "o1", "side": "buy",
    "price": "50000.5", "amount": "0.02", "status": "open", "created_at": "2026-11-26T08:00:00Z",
}  # fmt: skip
FILL = {
    "type": "fill", "session": "mm-1", "pair": "BTC/USD", "order_id": "o1", "side": "buy",
    "price": "50000.5", "quantity": "0.01", "fee": "0.08", "trade_id": "T1",
    "time": "2026-11-26T08:00:01+00:00",
}  # fmt: skip


async def test_session_order_and_fill_are_applied_and_the_buy_opens_a_position(desk: Desk) -> None:
    for fields in (START, ORDER, FILL):
        desk.stream.add(**fields)
    counts = await desk.service.run_once("c1")
    assert (counts.applied, counts.duplicates, counts.quarantined) == (3, 0, 0)
    assert counts.by_type == {"session_start": 1, "order": 1, "fill": 1}
    session = desk.records.sessions["mm-1"]
    assert session.pairs == ("BTC/USD", "ETH/USD") and session.started_at == T0
    assert session.mode == "external" and desk.live.sessions["mm-1"] == session
    assert desk.store.orders[("mm-1", "BTC/USD", "o1")].price == Decimal("50000.5")
    [fill] = desk.store.fills[("mm-1", "BTC/USD")].values()
    assert fill.fee == Decimal("0.08") and fill.trade_id == "T1"
    assert ("mm-1", "o1") in desk.store.positions  # the position mmops covers with a take-profit
    assert desk.stream.pending == {} and len(desk.stream.acked) == 3
    assert desk.service.totals == counts


async def test_a_fill_delivered_twice_is_recorded_once(desk: Desk) -> None:
    for fields in (START, FILL, FILL):
        desk.stream.add(**fields)
    counts = await desk.service.run_once("c1")
    assert (counts.applied, counts.duplicates) == (2, 1)
    assert len(desk.store.fills[("mm-1", "BTC/USD")]) == 1


async def test_a_session_start_again_with_the_same_pairs_changes_nothing(desk: Desk) -> None:
    desk.stream.add(**START)
    await desk.run()
    await desk.live.set_status("mm-1", SessionStatus.HALTED)
    desk.stream.add(**{**START, "pairs": "ETH/USD,BTC/USD"})
    counts = await desk.service.run_once("c1")
    assert counts.duplicates == 1
    assert desk.live.sessions["mm-1"].status is SessionStatus.HALTED  # not resumed


async def test_a_session_start_with_other_pairs_is_quarantined(desk: Desk) -> None:
    desk.stream.add(**START)
    desk.stream.add(**{**START, "pairs": "BTC/USD"})
    counts = await desk.service.run_once("c1")
    assert counts.quarantined == 1
    assert desk.rejects.reasons() == [
        "session mm-1 was started with pairs BTC/USD,ETH/USD, not BTC/USD"
    ]


async def test_session_end_ends_it_once(desk: Desk) -> None:
    desk.stream.add(**START)
    desk.stream.add(type="session_end", session="mm-1", ended_at="2026-11-26T09:00:00+01:00")
    desk.stream.add(type="session_end", session="mm-1")
    counts = await desk.service.run_once("c1")
    assert (counts.applied, counts.duplicates) == (2, 1)
    ended = desk.records.sessions["mm-1"]
    assert ended.status is SessionStatus.ENDED and ended.ended_at == T0


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({**FILL, "session": "nobody"}, "unknown session nobody (send session_start first)"),
        ({**FILL, "pair": "SOL/USD"}, "pair SOL/USD is not a pair of session mm-1"),
        ({**ORDER, "pair": "SOL/USD"}, "pair SOL/USD is not a pair of session mm-1"),
        ({"type": "session_end", "session": "nobody"}, "unknown session nobody"),
        ({"type": "trade", "session": "mm-1"}, "unknown type 'trade'"),
        ({"session": "mm-1"}, "missing field 'type'"),
    ],
)
async def test_what_cannot_be_applied_is_quarantined_once_with_its_reason(
    desk: Desk, fields: dict[str, str], reason: str
) -> None:
    desk.stream.add(**START)
    bad = desk.stream.add(**fields)
    counts = await desk.service.run_once("c1")
    assert counts.quarantined == 1
    [(key, (_, raw, recorded))] = desk.rejects.rows.items()
    assert key == ("mmops:ingest", bad) and raw == fields and recorded.startswith(reason)
    assert desk.stream.pending == {}  # acknowledged: a bad message never blocks the stream


@pytest.mark.parametrize("value", ["NaN", "-1", "0", "1E+999999", "1e-99", "inf", "1,5", " 1", ""])
@pytest.mark.parametrize("name", ["price", "quantity"])
def test_a_fill_needs_finite_positive_numbers_within_bounds(name: str, value: str) -> None:
    with pytest.raises(Rejected, match=name):
        parse_fill({**FILL, name: value})


@pytest.mark.parametrize("value", ["NaN", "-0.01", "1E+999999", "Infinity"])
def test_a_fee_or_capital_is_a_finite_non_negative_number(value: str) -> None:
    with pytest.raises(Rejected, match="fee"):
        parse_fill({**FILL, "fee": value})
    with pytest.raises(Rejected, match="capital"):
        parse_session_start({**START, "capital": value}, T0, "paper")


@pytest.mark.parametrize(
    "missing", ["session", "pair", "order_id", "side", "price", "quantity", "time"]
)
def test_a_fill_without_a_required_field_is_refused(missing: str) -> None:
    fields = {k: v for k, v in FILL.items() if k != missing}
    with pytest.raises(Rejected, match=f"missing field '{missing}'"):
        parse_fill(fields)


@pytest.mark.parametrize(
    "missing", ["session", "pair", "order_id", "side", "price", "amount", "status", "created_at"]
)
def test_an_order_without_a_required_field_is_refused(missing: str) -> None:
    fields = {k: v for k, v in ORDER.items() if k != missing}
    with pytest.raises(Rejected, match=f"missing field '{missing}'"):
        parse_order(fields)


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("time", "2026-11-26T08:00:00", "time without an offset"),
        ("time", "yesterday", "not an ISO 8601 time"),
        ("side", "long", "side: 'long' is not one of buy|sell"),
        ("session", "a{b}", "invalid session id"),
        ("pair", "btc-usd", "invalid pair"),
        ("order_id", "o 1", "invalid id"),
        ("trade_id", "T 1", "invalid id"),
    ],
)
def test_malformed_fill_fields_are_refused_with_a_reason(
    name: str, value: str, reason: str
) -> None:
    with pytest.raises(Rejected, match=reason):
        parse_fill({**FILL, name: value})


def test_optional_fields_take_their_defaults_and_ccxt_status_words_are_understood() -> None:
    fill = parse_fill({k: v for k, v in FILL.items() if k != "fee"})
    assert fill.fee == 0
    order = parse_order({**ORDER, "status": "closed", "filled": "0.02", "client_order_id": ""})
    assert order.status is OrderStatus.FILLED and order.side is Side.BUY
    assert order.client_order_id is None and order.filled == Decimal("0.02")
    assert parse_order({**ORDER, "status": "expired"}).status is OrderStatus.CANCELED
    session = parse_session_start({**START, "pairs": "BTC/USD, ETH/USD"}, T0, "kraken")
    assert session.pairs == ("BTC/USD", "ETH/USD") and session.exchange == "kraken"


def test_a_fill_without_the_venues_trade_id_is_refused() -> None:
    """Without it the fill feed's copy of the execution would be a second fill."""
    with pytest.raises(Rejected, match="trade_id"):
        parse_fill({k: v for k, v in FILL.items() if k != "trade_id"})


@pytest.mark.parametrize(
    ("pairs", "reason"),
    [("BTC/USD,BTC/USD", "duplicate pairs"), ("BTC/USD,", "invalid pair ''"), ("", "missing")],
)
def test_a_session_start_needs_distinct_valid_pairs(pairs: str, reason: str) -> None:
    with pytest.raises(Rejected, match=reason):
        parse_session_start({**START, "pairs": pairs}, T0, "paper")


async def test_a_store_outage_leaves_the_message_pending_until_it_can_be_applied(
    desk: Desk,
) -> None:
    desk.stream.add(**START)
    desk.stream.add(type="fill", session="mm-1")  # bad: its quarantine needs PostgreSQL
    desk.rejects.down = True
    with pytest.raises(StoreUnavailable):
        await desk.service.run_once("c1")
    assert list(desk.stream.pending.values()) == ["c1"]  # the start was applied and acked
    desk.rejects.down = False
    counts = await desk.service.run_once("c1")  # the consumer's own pending message first
    assert counts.quarantined == 1 and desk.stream.pending == {}


async def test_run_backs_off_on_an_outage_and_stops_when_told(desk: Desk) -> None:
    desk.rejects.down = True
    desk.stream.add(type="nonsense")
    stop = asyncio.Event()
    task = asyncio.create_task(desk.service.run("c1", stop))
    await asyncio.sleep(0.05)
    assert desk.stream.pending  # not acknowledged while PostgreSQL is down
    stop.set()
    await asyncio.wait_for(task, 1)
