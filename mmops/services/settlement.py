"""The settlement run: every recent session's uncovered positions covered, the stop-loss checked,
the outcome recorded.

One run: discover sessions (PostgreSQL) → ask for markets, tickers and balances once → per
session, under ``lock:settlement:{S}``: read its positions (while the market data is still on
its way, for the first), reconcile the take-profits believed live with the exchange
(``mmops.services.reconcile``), reprice stale ones, create take-profits for the uncovered
positions (pairs concurrently, isolated), check the portfolio stop-loss, write
``settlement:status:{S}`` / ``settlement:last_run:{S}`` and a ``settlement_runs`` row. Several
workers may run at once: leases (``WorkSharing``) share the sessions out, each due session to
one worker per round, and the session lock still guards each one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from mmops import logs
from mmops.domain.exchange import ExchangeOrder
from mmops.domain.models import ZERO, Balance, Position, Session
from mmops.domain.pnl import StopLossLevel
from mmops.domain.records import (
    ReadResult,
    RunState,
    SessionLease,
    SettlementRun,
    SettlementStatus,
    StopLossFigures,
    WorkItem,
    WorkKind,
)
from mmops.errors import (
    RECOVERABLE,
    RECOVERABLE_INPUT,
    BadRecordError,
    LockLost,
    LockNotAcquired,
    MmopsError,
    UnknownSession,
)
from mmops.ports import (
    Clock,
    Exchange,
    Positions,
    PriceRecorder,
    SessionLocks,
    SettlementRecords,
    SettlementRuns,
)
from mmops.services.parts import Part, Parts, Work
from mmops.services.price_history import record_prices
from mmops.services.reconcile import ReconcileAction, Reconciler, ReconcileReport
from mmops.services.reprice import Repricer
from mmops.services.sessions import SessionRegistry, WorkSharing
from mmops.services.stoploss import StopLossReport, StopLossService
from mmops.services.take_profit import TakeProfitService
from mmops.services.tp_results import MarketData, PairReport

log = logs.get_logger("mmops.settlement")
T = TypeVar("T")

NEVER_SPLIT = 2**31 - 1  # a group size no session reaches
_ENDS_RUN: tuple[type[Exception], ...] = (LockLost, *RECOVERABLE)


@dataclass(slots=True)
class SessionResult:
    session_id: str
    state: RunState
    started_at: datetime
    finished_at: datetime
    pairs: dict[str, PairReport] = field(default_factory=dict)
    stoploss: StopLossReport | None = None
    error: str | None = None
    part: str = ""  # a split session's part this run settled ('' the whole session)

    @property
    def ok(self) -> bool:
        return self.state.ok

    @property
    def duration_ms(self) -> int:
        return int((self.finished_at - self.started_at).total_seconds() * 1000)

    def totals(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for report in self.pairs.values():
            for name, n in report.counts().items():
                total[name] = total.get(name, 0) + n
        return total

    def errors(self) -> list[str]:
        found = [self.error] if self.error else []
        for report in self.pairs.values():
            if report.error:
                found.append(f"{report.symbol}: {report.error}")
            found.extend(f"{report.symbol} {f.position_id}: {f.kind}" for f in report.failed)
            found.extend(f"bad record {key}: {reason}" for key, reason in report.quarantined)
        if self.stoploss is not None:
            found.extend(f"stop-loss bad record {k}: {why}" for k, why in self.stoploss.bad)
        return found

    def to_dict(self) -> dict[str, Any]:
        stop = self.stoploss
        return {
            "session": self.session_id,
            **({"part": self.part} if self.part else {}),
            "state": self.state,
            "duration_ms": self.duration_ms,
            "totals": self.totals(),
            "errors": self.errors(),
            "stoploss": None if stop is None else {**stop.fields(), "action": stop.action},
            "pairs": {pair: report.to_dict() for pair, report in self.pairs.items()},
        }


class SettlementService:
    def __init__(
        self,
        registry: SessionRegistry,
        positions: Positions,
        records: SettlementRecords,
        runs: SettlementRuns,
        locks: SessionLocks,
        exchange: Exchange,
        take_profits: TakeProfitService,
        stoploss: StopLossService,
        repricer: Repricer | None,
        clock: Clock,
        *,
        hours_back: int,
        session_limit: int,
        worker: str,
        reconciler: Reconciler | None = None,
        sharing: WorkSharing | None = None,
        group_pairs: int = 0,
        prices: PriceRecorder | None = None,
    ) -> None:
        self._registry = registry
        self._positions = positions
        self._records = records
        self._runs = runs
        self._locks = locks
        self._exchange = exchange
        self._tp = take_profits
        self._stoploss = stoploss
        self._repricer = repricer
        self._reconciler = reconciler
        self._clock = clock
        self._hours_back = hours_back
        self._limit = session_limit
        self.worker = worker
        self._sharing = sharing
        self._parts = Parts(group_pairs)
        self._prices = prices  # price history for analytics (None: not recorded)

    async def run(
        self,
        session_id: str | None = None,
        pairs: Sequence[str] | None = None,
        *,
        scheduled: bool = False,
    ) -> list[SessionResult]:
        """Settle one session; or, without one, this worker's share of the due sessions
        (with ``sharing``; without it, the ``session_limit`` newest recent ones). A
        ``scheduled`` run (the daemon's) takes the sessions not done within the round (the
        interval); a one-off run (``mmops settle``) those not done since it started, so
        processes started together split them and a later run settles them all again.
        Per-session failures are in the results;
        StoreUnavailable (Redis or PostgreSQL down) ends the whole run at once.

        ``pairs`` (with ``session_id``) narrows the run to those pairs of the session: the
        quick run a new fill triggers. It covers and reprices them under the same lock and
        fence, and leaves two things to the full runs: the stop-loss (it needs every pair's
        mark) and reconciliation (its open-orders snapshot costs a REST call that Kraken's
        call counter would make every quick run wait for).

        A session with more than ``group_pairs`` pairs is settled in parts (``parts.py``):
        here one after another; shared, by whichever workers claim them.
        """
        if session_id is None and self._sharing is not None:
            return await self._run_shared(self._sharing, scheduled)
        sessions = await self._sessions(session_id)
        parts: list[Part] = []
        for session in sessions:
            if pairs is None:
                parts.extend(self._parts.full(session))
            else:
                parts.extend(self._parts.quick(session, pairs))
        return await self._settle_all(parts)

    async def _settle_all(
        self, parts: list[Part], still_ours: Callable[[int], Awaitable[bool]] | None = None
    ) -> list[SessionResult]:
        """Settle the parts in order on one market-data snapshot, a result per part.
        ``still_ours(i)`` (claimed parts) renews part i's lease first: a part whose lease
        another worker took meanwhile is left to it (reported locked).

        The snapshot is on its way while the first parts take their locks and read their
        positions (a round trip to the exchange costs more than both): they wait for it only
        where they need prices. If it cannot be fetched, no part is settled."""
        if not parts:
            return []
        started = self._clock.now()
        # A split session's part '' asks for the open orders itself, once it holds its locks.
        reconcile = any(p.work is Work.FULL for p in parts)
        market = asyncio.ensure_future(
            self._market_data([p.session for p in parts], reconcile=reconcile)
        )
        try:
            return await self._settle_parts(parts, market, started, still_ours)
        finally:
            _forget(market)

    async def _settle_parts(
        self,
        parts: list[Part],
        market: asyncio.Future[MarketData],
        started: datetime,
        still_ours: Callable[[int], Awaitable[bool]] | None,
    ) -> list[SessionResult]:
        """``_settle_all``'s loop: the parts batch after batch (``_batches``), the first
        batch with the market data still on its way. If it cannot be fetched, the parts that
        waited for it were recorded failed under their locks; every later part gets a
        ``settlement_runs`` row only (its status is written only under its lock)."""
        data: MarketData | None = None
        results: list[SessionResult] = []
        for start, together in _batches(parts):
            ours = [still_ours is None or await still_ours(start + k) for k in range(len(together))]
            snapshot = market if data is None else data
            runs = (self._settle(p, snapshot) for p, o in zip(together, ours, strict=True) if o)
            settled = iter(await _all(runs))
            batch = [
                next(settled) if mine else self._locked(part, self._clock.now())
                for part, mine in zip(together, ours, strict=True)
            ]
            results.extend(batch)
            if data is None:
                rest = parts[start + len(together) :]
                if not rest and not market.done():
                    return results  # no part needed it (all held elsewhere): not waited for
                try:
                    data = await market
                except RECOVERABLE as e:
                    log.error("settlement.market_data_failed", error=str(e))
                    for part in rest:
                        result = self._failed(part, started, f"market data: {e}")
                        await self._record(result, dry_run=self._tp.dry_run, full=False)
                        results.append(result)
                    return results
            for result in batch:
                data = _after_placements(data, result)
        return results

    async def _run_shared(self, sharing: WorkSharing, scheduled: bool) -> list[SessionResult]:
        """This worker's share of the round: due sessions claimed batch by batch (SKIP
        LOCKED, the longest-waiting first) until none is due, each marked done once settled
        (also when it failed or was locked by a quick run: the next round tries again). A
        batch cut short by an exception is released for another worker to take at once."""
        leases, kind = sharing.leases, WorkKind.SETTLEMENT
        since = self._clock.now() - timedelta(hours=self._hours_back)
        # A scheduled run's round is the interval; a one-off run's, the earliest start among
        # the one-off runs in progress (processes started together split the sessions). A
        # run joins first, before it touches a lease: a worker that finished the round while
        # this one was still discovering and splitting (or that found the due parts held for
        # a moment by another's statement, and stopped) must not leave this run a round of
        # its own, in which it would settle every part again.
        round_started = (
            None if scheduled else await leases.begin_run(kind, self.worker, sharing.ttl)
        )
        results: list[SessionResult] = []
        try:
            await leases.discover(kind, since)
            await self._split(sharing, since)
            await self._flag_stale(sharing)
            while claimed := await leases.claim(
                kind, self.worker, sharing.batch, sharing.ttl, sharing.due_age,
                since=since, stale_due_age=sharing.stale_due_age, round_started=round_started,
            ):  # fmt: skip
                results.extend(await self._settle_claimed(sharing, claimed))
                if round_started is not None:
                    await leases.beat(kind, self.worker)
        finally:
            if round_started is not None:
                with contextlib.suppress(MmopsError):
                    await leases.end_run(kind, self.worker)
        return results

    async def _split(self, sharing: WorkSharing, since: datetime) -> None:
        """Give each big session one lease per group of its pairs, the groups in the rows (so
        every worker settles the same ones), and drop the group leases of a session that no
        longer needs them (with ``group_pairs`` 0, of every session split before)."""
        max_pairs = self._parts.group_pairs or NEVER_SPLIT
        for sid, pairs in (await sharing.leases.splittable(since, max_pairs)).items():
            await sharing.leases.set_parts(WorkKind.SETTLEMENT, sid, self._parts.groups(pairs))

    async def _settle_claimed(
        self, sharing: WorkSharing, claimed: list[WorkItem]
    ) -> list[SessionResult]:
        """Settle the claimed parts and mark each done. A part that could not have its locks
        in time (a run of another worker or a quick run held them past the part's wait) is
        released, due again at once: its stop-loss or its group must not wait a round. A
        batch cut short by an exception is released for another worker to take at once."""
        leases, kind = sharing.leases, WorkKind.SETTLEMENT
        pending = set(claimed)
        try:
            parts = await self._claimed_parts(claimed)

            async def still_ours(i: int) -> bool:
                return await leases.renew(kind, parts[i][0], self.worker, sharing.ttl)

            results = await self._settle_all([part for _, part in parts], still_ours)
            locked = {
                item
                for (item, _), result in zip(parts, results, strict=True)
                if result.state is RunState.LOCKED
            }
            for item in claimed:
                if item not in locked:
                    await leases.done(kind, item, self.worker)
                    pending.discard(item)
        finally:
            for item in pending:  # best effort: on failure the lease expires anyway
                with contextlib.suppress(MmopsError):
                    await leases.release(kind, item, self.worker)
        return results

    async def _claimed_parts(self, claimed: list[WorkItem]) -> list[tuple[WorkItem, Part]]:
        """The parts the leases name (a session gone, or a group none of whose pairs the
        session still has, is nothing to do: marked done)."""
        sessions: dict[str, Session | None] = {}
        parts = []
        for item in claimed:
            if item.session_id not in sessions:
                sessions[item.session_id] = await self._registry.get(item.session_id)
            session = sessions[item.session_id]
            part = None if session is None else Parts.claimed(session, item)
            if part is not None:
                parts.append((item, part))
        return parts

    async def _flag_stale(self, sharing: WorkSharing) -> None:
        """Flag running sessions with no fill for ``stale_after`` (logged once, by the worker
        that flags it); they are settled only every ``stale_every`` rounds from then on."""
        stale, fresh = await sharing.leases.mark_stale(sharing.stale_after)
        for sid in stale:
            log.warning("session.stale", session=sid, after_s=sharing.stale_after.total_seconds(),
                        settled_every_rounds=sharing.stale_every)  # fmt: skip
        for sid in fresh:
            log.info("session.not_stale", session=sid)

    async def _sessions(self, session_id: str | None) -> list[Session]:
        if session_id is None:
            return await self._registry.recent_sessions(
                self._hours_back, self._limit, self._clock.now()
            )
        session = await self._registry.get(session_id)
        if session is None:
            raise UnknownSession(session_id)
        return [session]

    async def _market_data(self, sessions: list[Session], reconcile: bool) -> MarketData:
        pairs = sorted({pair for s in sessions for pair in s.pairs})
        # Stamped before the balances are asked for: every order the snapshot may show was
        # placed before this time (what balance reservations count against it).
        fetched_at = self._clock.now()
        markets, tickers, balances, open_orders = await asyncio.gather(
            self._exchange.markets(),
            self._exchange.tickers(pairs),
            self._exchange.balances(),
            self._open_orders() if reconcile else _nothing(),
        )
        return MarketData(markets, tickers, balances, open_orders, fetched_at=fetched_at)

    async def _open_orders(self) -> tuple[ExchangeOrder, ...] | None:
        """The account's open orders in one call, for reconciliation to check every
        session's take-profits against; None (each session then asks) if it fails."""
        if self._reconciler is None:
            return None
        try:
            return tuple(await self._exchange.open_orders())
        except RECOVERABLE as e:
            log.warning("settlement.open_orders_failed", error=str(e))
            return None

    async def _settle(
        self, part: Part, market: MarketData | asyncio.Future[MarketData]
    ) -> SessionResult:
        session = part.session
        started = self._clock.now()
        plog = log.bind(session=session.id, **({"part": part.name} if part.name else {}))
        plog.info("settlement.started", pairs=len(session.pairs))
        try:
            async with part.lock(self._locks) as lease:
                try:
                    result = await self._settle_locked(part, market, started, lease)
                except _NoMarketData as e:  # logged once, by _settle_parts
                    result = self._failed(part, started, f"market data: {e.error}")
                # Recorded under the locks: a stop-loss level (flatten) is saved before the
                # run of a group can read the level it replaces.
                await self._record(result, dry_run=self._tp.dry_run, full=part.whole)
        except LockNotAcquired:
            plog.info("settlement.skipped_locked")
            return self._locked(part, started)
        except _ENDS_RUN as e:
            # Lost: paused past the lock's TTL, the new holder carries on. Anything else (a
            # store down, the key refused) ends the run.
            error = str(e) if isinstance(e, LockLost) else f"{type(e).__name__}: {e}"
            plog.error("settlement.lock_lost" if isinstance(e, LockLost) else "settlement.failed",
                       error=error)  # fmt: skip
            result = self._failed(part, started, error)
            await self._record(result, dry_run=self._tp.dry_run, full=part.whole)
        plog.info("settlement.finished", state=result.state, duration_ms=result.duration_ms,
                  **result.totals())  # fmt: skip
        return result

    def _locked(self, part: Part, started: datetime) -> SessionResult:
        return SessionResult(
            part.session.id, RunState.LOCKED, started, self._clock.now(), part=part.name
        )

    async def _record_prices(self, part: Part, data: MarketData) -> None:
        """Price history (analytics and the backtest's runs): the tickers of the pairs this
        part settles, once per run; never fails the run. A split session's part '' covers
        only what reconciliation released, and its groups record every pair: it records none."""
        if part.work is not Work.CHECK:
            await record_prices(self._prices, part.session, data.tickers)

    async def _settle_locked(
        self,
        part: Part,
        market: MarketData | asyncio.Future[MarketData],
        started: datetime,
        lease: SessionLease,
    ) -> SessionResult:
        """Under the part's locks. A whole part first reconciles the session with the
        exchange and ends with the stop-loss check; the part covers its pairs (a split
        session's part '' only those where reconciliation released a take-profit). Its
        positions are read first, while the market data may still be on its way."""
        session, full = part.session, part.whole
        read = await self._read(part)
        data = await _snapshot(market)
        await self._record_prices(part, data)
        reports = {pair: PairReport(pair) for pair in session.pairs}
        if full and self._reconciler is not None:
            data, read = await self._reconcile(part, data, reports, read)
        pairs = _to_cover(part, reports)
        if not pairs or await self._flattened(session.id):
            if not full:
                return SessionResult(
                    session.id, RunState.OK, started, self._clock.now(), reports, part=part.name
                )
            return await self._only_stoploss(session, data, started, reports, lease)
        coverable = await asyncio.gather(
            *(self._coverable(session.id, p, reports[p], data, read[p]) for p in pairs),
            return_exceptions=True,
        )
        by_pair: dict[str, list[Position]] = {}
        for pair, positions in zip(pairs, coverable, strict=True):
            if isinstance(positions, RECOVERABLE):
                reports[pair].error = f"{type(positions).__name__}: {positions}"
            elif isinstance(positions, BaseException):
                raise positions
            else:
                by_pair[pair] = positions
        data = _with_released(data, reports)
        reports = await self._tp.create_batch(session.id, by_pair, data, reports, lease)
        if lease.lost:  # found lost after the last send: say so, and do nothing more
            raise LockLost(session.id)
        stop: StopLossReport | None = None
        stop_error: str | None = None
        if full:
            stop, stop_error = await self._check_stoploss(session, data)
        errors = sum(r.error is not None for r in reports.values())
        ok = all(r.ok for r in reports.values()) and not stop_error and not (stop and stop.bad)
        state = RunState.OK if ok else RunState.PARTIAL
        if reports and errors == len(reports):
            state = RunState.FAILED
        return SessionResult(
            session_id=session.id,
            state=state,
            started_at=started,
            finished_at=self._clock.now(),
            pairs=reports,
            stoploss=stop,
            error=stop_error,
            part=part.name,
        )

    async def _read(self, part: Part) -> dict[str, _Read]:
        """Every pair's positions as the part needs them, or the error reading them.

        A part that reconciles reads every position (all pairs at once; a pair that cannot be
        read fails the part, as reconciliation needs them all). Otherwise, with repricing on,
        every position is read once (repricing needs the covered ones too) and the uncovered
        are taken from that read; without it only the uncovered index is read."""
        session = part.session
        if part.whole and self._reconciler is not None:
            reads = await _all(self._positions.all(session.id, pair) for pair in session.pairs)
            return dict(zip(session.pairs, reads, strict=True))
        if part.work is Work.CHECK:
            return {}  # it covers what reconciliation released: without a reconciler, nothing
        read = self._positions.all if self._live_repricer else self._positions.uncovered
        outcomes = await asyncio.gather(
            *(read(session.id, pair) for pair in session.pairs), return_exceptions=True
        )
        for outcome in outcomes:  # a pair's recoverable error fails that pair only
            if isinstance(outcome, BaseException) and not isinstance(outcome, RECOVERABLE):
                raise outcome
        return dict(zip(session.pairs, outcomes, strict=True))

    @property
    def _live_repricer(self) -> Repricer | None:
        """The repricer when it may change orders (not in a dry run): then every position is
        read, covered ones too."""
        return None if self._tp.dry_run else self._repricer

    async def _flattened(self, session_id: str) -> bool:
        """A flattened session gets no new take-profits: its positions are being exited."""
        status = await self._records.settlement_status(session_id)
        level = status.stoploss_level if status is not None else None
        return level is StopLossLevel.FLATTEN and not self._tp.dry_run

    async def _only_stoploss(
        self,
        session: Session,
        data: MarketData,
        started: datetime,
        reports: dict[str, PairReport],
        lease: SessionLease,
    ) -> SessionResult:
        if lease.lost:  # a flatten sends orders: never on a session another worker holds
            raise LockLost(session.id)
        stop, stop_error = await self._check_stoploss(session, data)
        return SessionResult(
            session_id=session.id,
            state=RunState.PARTIAL if stop_error or (stop and stop.bad) else RunState.OK,
            started_at=started,
            finished_at=self._clock.now(),
            pairs=reports,
            stoploss=stop,
            error=stop_error,
        )

    async def _check_stoploss(
        self, session: Session, data: MarketData
    ) -> tuple[StopLossReport | None, str | None]:
        """The stop-loss's report, or why it could not be measured (the run goes on)."""
        try:
            return await self._stoploss.check(session, data), None
        except RECOVERABLE_INPUT as e:
            stop_error = f"stop-loss: {type(e).__name__}: {e}"
            log.error("stoploss.failed", session=session.id, error=stop_error)
            return None, stop_error

    async def _reconcile(
        self,
        part: Part,
        data: MarketData,
        reports: dict[str, PairReport],
        read: dict[str, _Read],
    ) -> tuple[MarketData, dict[str, _Read]]:
        """Believe the exchange before anything is covered: fills recorded, take-profits it no
        longer shows released (so this run covers their positions again); counts per pair.
        A split session's part '' asks for the open orders only now, holding its locks: a
        snapshot taken before its wait for the groups' runs would miss their take-profits,
        which it would then look up one by one.

        ``read`` is every pair's positions (read under the lock); returns the market data and
        those positions as they are after reconciling (those it changed read again). What a
        fill changes meanwhile, the claim's own read sees."""
        assert self._reconciler is not None
        session = part.session
        if part.work is Work.CHECK:
            data = replace(data, open_orders=await self._open_orders())
        # Every pair's (``_read`` raises for a part that reconciles); narrowed for the types.
        positions = {pair: r for pair, r in read.items() if isinstance(r, ReadResult)}
        report = await self._reconciler.session(
            session, open_orders=data.open_orders, dry_run=self._tp.dry_run,
            report_unknown=False, positions=positions,
        )  # fmt: skip
        for pair, pair_report in reports.items():
            pair_report.reconciled = report.counts(pair)
        return data, {**read, **await self._read_changed(session.id, positions, report)}

    async def _read_changed(
        self,
        session_id: str,
        read: dict[str, ReadResult[Position]],
        report: ReconcileReport,
    ) -> dict[str, ReadResult[Position]]:
        """The positions ``read`` with those reconciliation changed (a coverage released, a
        take-profit marked filled) read again."""
        acted = (ReconcileAction.RELEASED, ReconcileAction.RECORDED_FILL)
        changed = sorted(
            {r.position_id for r in report.rows if r.position_id and r.action in acted}
        )
        if report.dry_run or not changed:
            return read
        fresh = await self._positions.read_many(session_id, changed)
        by_id = {p.position_id: p for p in fresh.items}
        return {
            pair: ReadResult([by_id.get(p.position_id, p) for p in r.items], r.bad)
            for pair, r in read.items()
        }

    async def _coverable(
        self,
        session_id: str,
        pair: str,
        report: PairReport,
        data: MarketData,
        read: _Read,
    ) -> list[Position]:
        """The pair's positions that need a take-profit (from ``read``: what ``_read`` read,
        as reconciliation left them), after repricing stale ones. Raises the read's error."""
        if isinstance(read, BaseException):
            raise read
        # A position of another pair in this pair's index would be priced, allocated and sold
        # against the wrong market: a bad record, like one that does not parse.
        strays = [_stray(session_id, pair, p) for p in read.items if p.symbol != pair]
        report.quarantine([*read.bad, *strays])
        for bad in [*read.bad, *strays]:
            log.error("settlement.bad_record", session=session_id, key=bad.key, reason=bad.reason)
        positions = [p for p in read.items if p.symbol == pair]
        if (repricer := self._live_repricer) is not None:
            released = await repricer.run(positions, report, data)
            if released:
                fresh = await self._positions.read_many(session_id, sorted(released))
                by_id = {p.position_id: p for p in fresh.items}
                positions = [by_id.get(p.position_id, p) for p in positions]
        return [p for p in positions if p.uncovered > 0 or p.pending]

    def _failed(self, part: Part, started: datetime, error: str) -> SessionResult:
        return SessionResult(
            part.session.id, RunState.FAILED, started, self._clock.now(), error=error,
            part=part.name,
        )  # fmt: skip

    async def _record(self, result: SessionResult, dry_run: bool, full: bool = True) -> None:
        """A row in PostgreSQL and, for a full run, the status in Redis (a narrowed run's
        status would say the session was just settled while the schedule may have stopped);
        a failure to record is logged, not raised."""
        totals = result.totals()
        stoploss: StopLossFigures | None
        if result.stoploss is not None:
            stoploss = result.stoploss.figures()
        else:  # this run measured nothing: keep what the last one did
            stoploss = await self._keep_stoploss(result.session_id)
        status = SettlementStatus(
            state=result.state,
            placed=totals.get("placed", 0),
            skipped=totals.get("skipped", 0),
            failed=totals.get("failed", 0),
            errors=tuple(result.errors()[:50]),
            duration_ms=result.duration_ms,
            finished_at=result.finished_at,
            worker=self.worker,
            dry_run=dry_run,
            stoploss=stoploss,
        )
        row = SettlementRun(
            session_id=result.session_id,
            worker=self.worker,
            state=result.state,
            started_at=result.started_at,
            finished_at=result.finished_at,
            placed=totals.get("placed", 0),
            skipped=totals.get("skipped", 0),
            failed=totals.get("failed", 0),
            dry_run=dry_run,
            details=result.to_dict(),
        )
        writes: list[Callable[[], Awaitable[None]]] = [lambda: self._runs.record(row)]
        if full:
            sid = result.session_id
            writes.insert(0, lambda: self._records.write_settlement_status(sid, status))
        for write in writes:
            try:
                await write()
            except MmopsError as e:
                log.error("settlement.record_failed", session=result.session_id, error=str(e))

    async def _keep_stoploss(self, session_id: str) -> StopLossFigures | None:
        """The stop-loss figures of the previous status, kept when this run measured nothing."""
        try:
            previous = await self._records.settlement_status(session_id)
        except MmopsError:
            return None
        return previous.stoploss if previous is not None else None


def _with_released(data: MarketData, reports: dict[str, PairReport]) -> MarketData:
    """Balances plus what repricing just freed: the run's snapshot predates those cancels."""
    freed: dict[str, Decimal] = {}
    for pair, report in reports.items():
        market = data.markets.get(pair)
        if market is not None and report.released:
            freed[market.base] = freed.get(market.base, ZERO) + report.released
    if not freed:
        return data
    balances = dict(data.balances)
    for asset, amount in freed.items():
        b = balances.get(asset) or Balance(asset, ZERO, ZERO, ZERO)
        balances[asset] = replace(b, free=b.free + amount, used=max(b.used - amount, ZERO))
    return replace(data, balances=balances)


def _after_placements(data: MarketData, result: SessionResult) -> MarketData:
    """Balances as the next session of this run should see them: what was placed is held."""
    held: dict[str, Balance] = dict(data.balances)
    for pair, report in result.pairs.items():
        market = data.markets.get(pair)
        if market is None:
            continue
        amount = sum((p.amount for p in report.placed if not p.dry_run), ZERO)
        if not amount:
            continue
        b = held.get(market.base)
        if b is not None:
            held[market.base] = replace(b, free=max(b.free - amount, ZERO), used=b.used + amount)
    return replace(data, balances=held)


async def _nothing() -> None:
    return None


# A pair's positions as read under the part's lock, or why they could not be read.
_Read = ReadResult[Position] | BaseException


class _NoMarketData(Exception):
    """The run's market data could not be fetched: the part is not settled."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


async def _snapshot(market: MarketData | asyncio.Future[MarketData]) -> MarketData:
    """The run's market data, waited for if still on its way; raises _NoMarketData."""
    if isinstance(market, MarketData):
        return market
    try:
        return await asyncio.shield(market)  # a part cancelled leaves it to the others
    except RECOVERABLE as e:
        raise _NoMarketData(e) from e


def _forget(market: asyncio.Future[MarketData]) -> None:
    """Cancel the fetch if still under way; its error, if any, is reported elsewhere."""
    if not market.done():
        market.cancel()
    elif not market.cancelled():
        market.exception()  # retrieved: no "never retrieved" warning


async def _all(runs: Iterable[Awaitable[T]]) -> list[T]:
    """Every run to its end (none left running on its own when another raises), then the
    results in order, or the first exception raised."""
    done = await asyncio.gather(*runs, return_exceptions=True)
    for outcome in done:
        if isinstance(outcome, BaseException):
            raise outcome
    return [outcome for outcome in done if not isinstance(outcome, BaseException)]


def _batches(parts: list[Part]) -> list[tuple[int, list[Part]]]:
    """The parts in the order given, one at a time, except that the groups of one split session
    that follow each other run together (their pairs share no base asset, so no balance: one
    process settles a big session as fast as unsplit). With the index of each batch's first."""
    batches: list[tuple[int, list[Part]]] = []
    for i, part in enumerate(parts):
        last = batches[-1][1] if batches else None
        if last is not None and _same_split_session_groups(last[-1], part):
            last.append(part)
        else:
            batches.append((i, [part]))
    return batches


def _same_split_session_groups(a: Part, b: Part) -> bool:
    return (
        a.work is b.work is Work.COVER
        and bool(a.name and b.name)
        and (a.session.id == b.session.id)
    )


def _to_cover(part: Part, reports: dict[str, PairReport]) -> tuple[str, ...]:
    """The pairs the part covers: a split session's part '' only those where reconciliation
    released a take-profit (the exchange cancelled it), the other parts all theirs."""
    if part.work is not Work.CHECK:
        return part.session.pairs
    return tuple(pair for pair, r in reports.items() if r.reconciled.get("released", 0))


def _stray(session_id: str, pair: str, p: Position) -> BadRecordError:
    where = f"position {p.position_id} of session {session_id}"
    return BadRecordError(where, p.symbol, f"a position of {p.symbol} in the index of {pair}")
