"""The fill feed service against in-memory fakes: which session an execution belongs to, once
each, and a cursor that moves only past what is recorded."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from decimal import Decimal

import pytest

from mmops.domain.exchange import Trade
from mmops.domain.models import Order, OrderKind, OrderStatus, Side
from mmops.errors import StoreUnavailable
from mmops.services.feed import Attribution, FeedService
from tests.unit.desk import BTC_USD, ETH_USD, T0, Desk


class History:
    """An ExecutionFeed whose history is a list (cursor = index) and whose stream is empty."""

    account = "test-account"

    def __init__(self, trades: list[Trade]) -> None:
        self.trades = trades

    async def history(self, cursor: str | None, since: datetime) -> tuple[list[Trade], str]:
        start = int(cursor or 0)
        return self.trades[start:], str(len(self.trades))

    async def stream(self) -> AsyncIterator[list[Trade]]:
        if False:  # pragma: no cover - an empty stream
            yield []

    async def close(self) -> None:
        return None


class Cursors:
    def __init__(self) -> None:
        self.saved: dict[str, str] = {}

    async def get(self, account: str) -> str | None:
        return self.saved.get(account)

    async def set(self, account: str, cursor: str) -> None:
        self.saved[account] = cursor


def trade(n: int, order_id: str, pair: str = BTC_USD, side: Side = Side.BUY) -> Trade:
    return Trade(f"T{n}", order_id, pair, side, Decimal("100"), Decimal("0.01"), Decimal("0.002"),
                 T0 + timedelta(minutes=n))  # fmt: skip


def service(
    desk: Desk,
    trades: list[Trade],
    cursors: Cursors | None = None,
    attribution: Attribution = "order",
    grace: float = 60.0,
) -> FeedService:
    return FeedService(History(trades), cursors or Cursors(), desk.registry, desk.store,
                       desk.store, desk.exchange, desk.clock, hours_back=24,
                       session_limit=100, attribution=attribution, grace=grace)  # fmt: skip


async def order(desk: Desk, sid: str, order_id: str, pair: str = BTC_USD) -> None:
    await desk.store.save(Order(sid, order_id, pair, Side.BUY, Decimal("100"), Decimal("1"), T0))


async def fills_of(desk: Desk, sid: str, pair: str = BTC_USD) -> int:
    return sum([len(r.items) async for r in desk.store.scan(sid, pair)])


async def test_an_execution_goes_to_the_session_that_recorded_its_order() -> None:
    desk = Desk()
    await desk.start("s1", BTC_USD)
    await desk.start("s2", BTC_USD)
    await order(desk, "s2", "o1")
    feed = service(desk, [trade(1, "o1")])
    assert len(await feed.record([trade(1, "o1")])) == 1
    assert await fills_of(desk, "s2") == 1 and await fills_of(desk, "s1") == 0


async def test_with_the_pair_rule_an_unrecorded_order_goes_to_the_one_active_session() -> None:
    desk = Desk()
    await desk.start("s1", ETH_USD)
    await desk.start("s2", BTC_USD)
    feed = service(desk, [], attribution="pair")
    assert len(await feed.record([trade(1, "o9")])) == 1
    assert await fills_of(desk, "s2") == 1
    made = await desk.store.get("s2", BTC_USD, "o9")
    assert made is not None and made.kind is OrderKind.ENTRY
    assert made.status is OrderStatus.FILLED and made.filled == Decimal("0.01")
    assert feed.counts.orders_written == 1


async def test_an_execution_two_active_sessions_could_own_is_not_guessed() -> None:
    desk = Desk()
    await desk.start("s1", BTC_USD)
    await desk.start("s2", BTC_USD)
    feed = service(desk, [], attribution="pair", grace=0)
    assert len(await feed.record([trade(1, "o9")])) == 0
    assert feed.counts.waiting == 1
    await feed.retry_waiting()
    assert (feed.counts.waiting, feed.counts.unattributed) == (0, 1)  # reported, left alone
    assert await fills_of(desk, "s1") == 0 and await fills_of(desk, "s2") == 0


async def test_by_default_an_unrecorded_order_waits_for_its_record_and_is_then_recorded() -> None:
    desk = Desk()
    await desk.start("s1", BTC_USD)
    feed = service(desk, [])
    assert await feed.record([trade(1, "o9")]) == []  # the venue's message came first
    assert feed.counts.waiting == 1 and await fills_of(desk, "s1") == 0
    await order(desk, "s1", "o9")  # the market maker's order arrives through ingest
    [fill] = await feed.retry_waiting()
    assert fill.session_id == "s1" and feed.counts.waiting == 0
    assert feed.counts.unattributed == 0


async def test_a_manual_buy_is_reported_after_the_grace_and_never_read_again() -> None:
    desk = Desk()
    await desk.start("s1", BTC_USD)
    cursors = Cursors()
    history = [trade(1, "manual")]
    feed = service(desk, history, cursors, grace=0)
    assert await feed.catch_up() == []
    assert cursors.saved == {}  # not past an execution still waiting
    await feed.retry_waiting()
    assert feed.counts.unattributed == 1
    assert await feed.catch_up() == [] and cursors.saved == {"test-account": "1"}
    assert feed.counts.unattributed == 1 and feed.counts.waiting == 0
    assert await fills_of(desk, "s1") == 0


async def test_an_ended_session_keeps_its_own_orders_but_takes_no_stranger() -> None:
    desk = Desk()
    await desk.start("old", BTC_USD)
    await order(desk, "old", "tp-1")
    await desk.registry.end("old", T0 + timedelta(minutes=5))
    await desk.start("new", BTC_USD)
    feed = service(desk, [], attribution="pair")
    await feed.record([trade(1, "tp-1", side=Side.SELL), trade(2, "o9")])
    assert await fills_of(desk, "old") == 1  # its take-profit's fill, by the recorded order
    assert await fills_of(desk, "new") == 1  # the stranger: the one active session


async def test_a_replayed_execution_is_recorded_once() -> None:
    desk = Desk()
    await desk.start("s1", BTC_USD)
    await order(desk, "s1", "o1")
    feed = service(desk, [])
    assert len(await feed.record([trade(1, "o1"), trade(1, "o1")])) == 1
    assert len(await feed.record([trade(1, "o1")])) == 0
    assert feed.counts.duplicates == 2
    [position] = (await desk.store.all("s1", BTC_USD)).items
    assert position.filled == Decimal("0.01")


async def test_catching_up_records_the_history_and_moves_the_cursor_past_it() -> None:
    desk = Desk()
    await desk.start("s1", BTC_USD)
    cursors = Cursors()
    for oid in ("o1", "o2", "o3"):
        await order(desk, "s1", oid)
    history = [trade(1, "o1"), trade(2, "o2")]
    feed = service(desk, history, cursors)
    assert len(await feed.catch_up()) == 2
    assert cursors.saved == {"test-account": "2"}
    history.append(trade(3, "o3"))
    assert len(await feed.catch_up()) == 1  # from the cursor on
    assert cursors.saved == {"test-account": "3"}


async def test_the_cursor_stays_when_recording_fails() -> None:
    desk = Desk()
    await desk.start("s1", BTC_USD)
    cursors = Cursors()
    await order(desk, "s1", "o1")
    feed = service(desk, [trade(1, "o1")], cursors)

    async def down(fill: object) -> bool:
        raise StoreUnavailable("Redis", "down")

    desk.store.record = down  # type: ignore[method-assign]
    with pytest.raises(StoreUnavailable):
        await feed.catch_up()
    assert cursors.saved == {}  # the next catch-up reads the same executions again
