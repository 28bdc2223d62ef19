"""The settle trigger: new buy fills settle their (session, pair) after a debounce, a burst
makes one run, an event is acknowledged only once its run finished, and a run refused by a
held lock is tried again."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from mmops.domain.records import FillEvent, RunState
from mmops.errors import UnknownSession
from mmops.services.trigger import SettleTrigger


class Events:
    def __init__(self) -> None:
        self.acked: list[str] = []

    async def read(self, consumer: str, block_ms: int, count: int) -> list[FillEvent]:
        await asyncio.sleep(block_ms / 1000)
        return []

    async def ack(self, event_ids: Sequence[str]) -> None:
        self.acked.extend(event_ids)


class Settler:
    def __init__(self, answers: list[RunState | Exception] | None = None) -> None:
        self.calls: list[tuple[str, tuple[str, ...]]] = []
        self.answers = answers or []

    async def __call__(self, session_id: str, pairs: Sequence[str]) -> list[RunState]:
        self.calls.append((session_id, tuple(pairs)))
        answer = self.answers.pop(0) if self.answers else RunState.OK
        if isinstance(answer, Exception):
            raise answer
        return [answer]


def trigger(events: Events, settle: Settler, **kw: float) -> SettleTrigger:
    options = {"debounce": 0.02, "retry_every": 0.01, "give_up_after": 1.0} | kw
    return SettleTrigger(events, settle, consumer="w1", block_ms=10, **options)  # type: ignore[arg-type]


async def test_a_burst_of_fills_of_one_session_makes_one_run_of_the_pairs_that_filled() -> None:
    events, settle = Events(), Settler()
    t = trigger(events, settle)
    t.add(FillEvent("1-0", "s1", "BTC/USD"))
    t.add(FillEvent("2-0", "s1", "ETH/USD"))
    t.add(FillEvent("3-0", "s1", "BTC/USD"))
    await t.drain()
    assert settle.calls == [("s1", ("BTC/USD", "ETH/USD"))]
    assert events.acked == ["1-0", "2-0", "3-0"]


async def test_sessions_are_settled_separately() -> None:
    events, settle = Events(), Settler()
    t = trigger(events, settle)
    t.add(FillEvent("1-0", "s1", "BTC/USD"))
    t.add(FillEvent("2-0", "s2", "BTC/USD"))
    await t.drain()
    assert sorted(settle.calls) == [("s1", ("BTC/USD",)), ("s2", ("BTC/USD",))]
    assert sorted(events.acked) == ["1-0", "2-0"]


async def test_a_run_refused_by_a_held_lock_is_tried_again_and_acknowledged_after() -> None:
    events, settle = Events(), Settler([RunState.LOCKED, RunState.LOCKED, RunState.OK])
    t = trigger(events, settle)
    t.add(FillEvent("1-0", "s1", "BTC/USD"))
    await t.drain()
    assert len(settle.calls) == 3
    assert events.acked == ["1-0"]
    assert t.stats.retried == 2


async def test_a_fill_during_a_run_gets_a_run_of_its_own() -> None:
    events = Events()
    t: SettleTrigger

    class Slow(Settler):
        async def __call__(self, session_id: str, pairs: Sequence[str]) -> list[RunState]:
            if not self.calls:
                t.add(FillEvent("2-0", "s1", "ETH/USD"))  # arrives while the first run goes
            return await super().__call__(session_id, pairs)

    settle = Slow()
    t = trigger(events, settle)
    t.add(FillEvent("1-0", "s1", "BTC/USD"))
    await t.drain()
    assert settle.calls == [("s1", ("BTC/USD",)), ("s1", ("ETH/USD",))]
    assert events.acked == ["1-0", "2-0"]


async def test_an_unknown_session_is_acknowledged_and_not_retried() -> None:
    events, settle = Events(), Settler([UnknownSession("gone")])
    t = trigger(events, settle)
    t.add(FillEvent("1-0", "gone", "BTC/USD"))
    await t.drain()
    assert len(settle.calls) == 1 and events.acked == ["1-0"]


async def test_a_lock_held_past_the_give_up_time_leaves_the_fill_to_the_schedule() -> None:
    events, settle = Events(), Settler([RunState.LOCKED] * 1000)
    t = trigger(events, settle, give_up_after=0.05)
    t.add(FillEvent("1-0", "s1", "BTC/USD"))
    await t.drain()
    assert events.acked == ["1-0"] and t.stats.given_up == 1


async def test_stopping_while_a_lock_is_held_leaves_the_event_unacknowledged() -> None:
    events, settle = Events(), Settler([RunState.LOCKED] * 1000)
    t = trigger(events, settle, give_up_after=60)
    stop = asyncio.Event()
    running = asyncio.create_task(t.run(stop))
    t.add(FillEvent("1-0", "s1", "BTC/USD"))
    await asyncio.sleep(0.1)
    stop.set()
    await asyncio.wait_for(running, 2)
    assert settle.calls and events.acked == []  # delivered again after a restart
