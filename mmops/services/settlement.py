"""The settlement run: every recent session's uncovered positions covered, the stop-loss checked,
the outcome recorded.

One run: discover sessions (PostgreSQL) → fetch markets, tickers and balances once → per
session, under ``lock:settlement:{S}``: reconcile the take-profits believed live with the
exchange (``mmops.services.reconcile``), reprice stale ones, read uncovered positions,
create take-profits (pairs concurrently, isolated), check the portfolio stop-loss, write
``settlement:status:{S}`` / ``settlement:last_run:{S}`` and a ``settlement_runs`` row. Several
workers may run at once: leases (``WorkSharing``) share the sessions out, each due session to
one worker per round, and the session lock still guards each one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from mmops import logs
from mmops.domain.exchange import ExchangeOrder
from mmops.domain.groups import group_names, pair_groups
from mmops.domain.models import ZERO, Balance, Position, Session
from mmops.domain.pnl import StopLossLevel
from mmops.domain.records import (
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
from mmops.services.price_history import record_prices
from mmops.services.reconcile import Reconciler
from mmops.services.reprice import Repricer
from mmops.services.sessions import SessionRegistry, WorkSharing
from mmops.services.stoploss import StopLossReport, StopLossService
from mmops.services.take_profit import TakeProfitService
from mmops.services.tp_results import MarketData, PairReport

log = logs.get_logger("mmops.settlement")

# How long a part of a split session waits for the locks it needs: the whole part (reconciliation,
# the stop-loss, the status) for its groups' runs to end, a group for the whole part's.
PART_WAIT_S = 10.0


@dataclass(frozen=True, slots=True)
class _Part:
    """What one locked run does for a session (docs/ARCHITECTURE.md, "Work sharing").

    A session that fits in one group is one part: the whole session under its lock, covered,
    and (a full run) reconciled, stop-loss checked and its status written. A session with more
    pairs than the group size is split into groups of pairs that share no base asset: each
    group is covered under the group's own lock (so several workers settle one big session at
    once), and the whole part (``cover`` off) reconciles, checks the stop-loss and writes the
    status holding every lock of the session."""

    session: Session  # narrowed to the pairs this part covers
    cover: bool
    whole: bool
    name: str = ""
    scopes: tuple[str, ...] = ("",)
    wait: float = 0.0  # seconds to wait for the locks (0: a held lock skips the run)

    @property
    def split(self) -> bool:
        return self.scopes != ("",)

    def lock(self, locks: SessionLocks) -> AbstractAsyncContextManager[SessionLease]:
        if len(self.scopes) == 1 and not self.wait:
            return locks.hold(self.session.id, self.scopes[0])
        return locks.hold_all(self.session.id, self.scopes, wait=self.wait)


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
        self._group_pairs = group_pairs
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

        A session with more than ``group_pairs`` pairs is settled in parts (see ``_Part``):
        here one after another; shared, by whichever workers claim them.
        """
        if session_id is None and self._sharing is not None:
            return await self._run_shared(self._sharing, scheduled)
        sessions = await self._sessions(session_id)
        parts: list[_Part] = []
        for session in sessions:
            if pairs is None:
                parts.extend(self._parts(session))
            else:
                parts.extend(self._narrowed_parts(session, pairs))
        return await self._settle_all(parts)

    def _groups(self, session: Session) -> tuple[tuple[str, ...], ...]:
        return pair_groups(session.pairs, self._group_pairs)

    def _parts(self, session: Session) -> list[_Part]:
        """A full run's parts of the session: its groups, then the whole part."""
        groups = self._groups(session)
        names = group_names(groups)
        if not names:
            return [_Part(session, cover=True, whole=True)]
        return [
            *(self._group_part(session, g, n) for g, n in zip(groups, names, strict=True)),
            _Part(session, cover=False, whole=True, scopes=("", *names), wait=PART_WAIT_S),
        ]

    def _group_part(
        self, session: Session, group: Sequence[str], name: str, wait: float = PART_WAIT_S
    ) -> _Part:
        narrowed = _narrowed(session, group)
        return _Part(narrowed, cover=True, whole=False, name=name, scopes=(name,), wait=wait)

    def _narrowed_parts(self, session: Session, pairs: Sequence[str]) -> list[_Part]:
        """A quick run's parts: the session narrowed to ``pairs``, one part per group."""
        groups = self._groups(session)
        names = group_names(groups)
        if not names:
            narrowed = _narrowed(session, pairs)
            return [_Part(narrowed, cover=True, whole=False)] if narrowed.pairs else []
        wanted = set(pairs)
        return [  # a quick run does not wait: the trigger retries a held lock, backing off
            self._group_part(session, [p for p in group if p in wanted], name, wait=0)
            for group, name in zip(groups, names, strict=True)
            if wanted.intersection(group)
        ]

    def _claimed_part(self, session: Session, part: str) -> _Part | None:
        """The part a lease names, as this session's pairs group today (None: the session no
        longer has that part; its lease is dropped at the next discovery)."""
        groups = self._groups(session)
        names = group_names(groups)
        if part == "":
            if not names:
                return _Part(session, cover=True, whole=True)
            return _Part(session, cover=False, whole=True, scopes=("", *names), wait=PART_WAIT_S)
        if part not in names:
            return None
        return self._group_part(session, groups[names.index(part)], part)

    async def _settle_all(self, parts: list[_Part]) -> list[SessionResult]:
        if not parts:
            return []
        started = self._clock.now()
        sessions = [p.session for p in parts]
        try:
            data = await self._market_data(sessions, reconcile=any(p.whole for p in parts))
        except RECOVERABLE as e:
            log.error("settlement.market_data_failed", error=str(e))
            results = [self._failed(p, started, f"market data: {e}") for p in parts]
            for part, r in zip(parts, results, strict=True):
                await self._record(r, dry_run=self._tp.dry_run, full=part.whole)
            return results
        results = []
        for part in parts:
            result = await self._settle(part, data)
            data = _after_placements(data, result)
            results.append(result)
        return results

    async def _run_shared(self, sharing: WorkSharing, scheduled: bool) -> list[SessionResult]:
        """This worker's share of the round: due sessions claimed batch by batch (SKIP
        LOCKED, the longest-waiting first) until none is due, each marked done once settled
        (also when it failed or was locked by a quick run: the next round tries again). A
        batch cut short by an exception is released for another worker to take at once."""
        leases, kind = sharing.leases, WorkKind.SETTLEMENT
        since = self._clock.now() - timedelta(hours=self._hours_back)
        await leases.discover(kind, since)
        await self._split(sharing, since)
        await self._flag_stale(sharing)
        # A scheduled run's round is the interval; a one-off run's, the earliest start among
        # the one-off runs in progress (processes started together split the sessions).
        round_started = (
            None if scheduled else await leases.begin_run(kind, self.worker, sharing.ttl)
        )
        results: list[SessionResult] = []
        try:
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
        """Give each big session one lease per group of its pairs (and drop the group leases
        of a session that no longer needs them)."""
        if self._group_pairs <= 0:
            return
        leases = sharing.leases
        for sid, pairs in (await leases.splittable(since, self._group_pairs)).items():
            names = group_names(pair_groups(pairs, self._group_pairs))
            await leases.set_parts(WorkKind.SETTLEMENT, sid, names)

    async def _settle_claimed(
        self, sharing: WorkSharing, claimed: list[WorkItem]
    ) -> list[SessionResult]:
        """Settle the claimed parts and mark each done; a batch cut short by an exception is
        released for another worker to take at once, and so is a part of a split session that
        could not have its locks in time (its group, or its stop-loss, must not wait a
        round; an unsplit session locked by a quick run is done: that run covered it)."""
        leases, kind = sharing.leases, WorkKind.SETTLEMENT
        pending = set(claimed)
        try:
            parts = await self._claimed_parts(claimed)
            results = await self._settle_all([part for _, part in parts])
            retry = {
                item
                for (item, part), result in zip(parts, results, strict=True)
                if part.split and result.state is RunState.LOCKED
            }
            for item in claimed:
                if item not in retry:
                    await leases.done(kind, item, self.worker)
                    pending.discard(item)
        finally:
            for item in pending:  # best effort: on failure the lease expires anyway
                with contextlib.suppress(MmopsError):
                    await leases.release(kind, item, self.worker)
        return results

    async def _claimed_parts(self, claimed: list[WorkItem]) -> list[tuple[WorkItem, _Part]]:
        sessions: dict[str, Session | None] = {}
        parts = []
        for item in claimed:
            if item.session_id not in sessions:
                sessions[item.session_id] = await self._registry.get(item.session_id)
            session = sessions[item.session_id]
            part = None if session is None else self._claimed_part(session, item.part)
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

    async def _settle(self, part: _Part, data: MarketData) -> SessionResult:
        session = part.session
        started = self._clock.now()
        log.info("settlement.started", session=session.id, pairs=len(session.pairs),
                 **({"part": part.name} if part.name else {}))  # fmt: skip
        try:
            async with part.lock(self._locks) as lease:
                result = await self._settle_locked(part, data, started, lease)
        except LockNotAcquired:
            log.info("settlement.skipped_locked", session=session.id)
            return SessionResult(
                session.id, RunState.LOCKED, started, self._clock.now(), part=part.name
            )
        except LockLost as e:  # paused past the lock's TTL: the new holder carries on
            log.error("settlement.lock_lost", session=session.id, error=str(e))
            result = self._failed(part, started, str(e))
        except RECOVERABLE as e:  # anything else (a store down, the key refused) ends the run
            log.error("settlement.failed", session=session.id, error=str(e))
            result = self._failed(part, started, f"{type(e).__name__}: {e}")
        await self._record(result, dry_run=self._tp.dry_run, full=part.whole)
        log.info("settlement.finished", session=session.id, state=result.state,
                 duration_ms=result.duration_ms, **result.totals())  # fmt: skip
        return result

    async def _settle_locked(
        self, part: _Part, data: MarketData, started: datetime, lease: SessionLease
    ) -> SessionResult:
        """Cover the part's pairs; a ``whole`` part (not a run narrowed to some pairs) first
        reconciles them with the exchange and ends with the stop-loss check."""
        session, full = part.session, part.whole
        # Price history (analytics), once per session and full run; never fails the run.
        await record_prices(self._prices, session, data.tickers, whole=full)
        reports = {pair: PairReport(pair) for pair in session.pairs}
        if full:
            await self._reconcile(session, data, reports)
        if not part.cover or await self._flattened(session.id):
            if not full:
                return SessionResult(
                    session.id, RunState.OK, started, self._clock.now(), reports, part=part.name
                )
            return await self._only_stoploss(session, data, started, reports)
        reads = await asyncio.gather(
            *(self._coverable(session.id, pair, reports[pair], data) for pair in session.pairs),
            return_exceptions=True,
        )
        by_pair: dict[str, list[Position]] = {}
        for pair, read in zip(session.pairs, reads, strict=True):
            if isinstance(read, RECOVERABLE):
                reports[pair].error = f"{type(read).__name__}: {read}"
            elif isinstance(read, BaseException):
                raise read
            else:
                by_pair[pair] = read
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

    async def _flattened(self, session_id: str) -> bool:
        """A flattened session gets no new take-profits: its positions are being exited."""
        status = await self._records.settlement_status(session_id)
        level = status.stoploss_level if status is not None else None
        return level is StopLossLevel.FLATTEN and not self._tp.dry_run

    async def _only_stoploss(
        self, session: Session, data: MarketData, started: datetime, reports: dict[str, PairReport]
    ) -> SessionResult:
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
        self, session: Session, data: MarketData, reports: dict[str, PairReport]
    ) -> None:
        """Believe the exchange before anything is read: fills recorded, take-profits it no
        longer shows released (so this run covers their positions again); counts per pair."""
        if self._reconciler is None:
            return
        report = await self._reconciler.session(
            session, open_orders=data.open_orders, dry_run=self._tp.dry_run, report_unknown=False
        )
        for pair, pair_report in reports.items():
            pair_report.reconciled = report.counts(pair)

    async def _coverable(
        self, session_id: str, pair: str, report: PairReport, data: MarketData
    ) -> list[Position]:
        """The pair's positions that need a take-profit, after repricing stale ones.

        With repricing on, every position is read once (repricing needs the covered ones too)
        and the uncovered are taken from that read; otherwise only the uncovered index is read.
        """
        live = self._repricer is not None and not self._tp.dry_run
        read = await (self._positions.all if live else self._positions.uncovered)(session_id, pair)
        # A position of another pair in this pair's index would be priced, allocated and sold
        # against the wrong market: a bad record, like one that does not parse.
        strays = [_stray(session_id, pair, p) for p in read.items if p.symbol != pair]
        report.quarantine([*read.bad, *strays])
        for bad in [*read.bad, *strays]:
            log.error("settlement.bad_record", session=session_id, key=bad.key, reason=bad.reason)
        positions = [p for p in read.items if p.symbol == pair]
        if live and self._repricer is not None:
            released = await self._repricer.run(positions, report, data)
            if released:
                fresh = await self._positions.read_many(session_id, sorted(released))
                by_id = {p.position_id: p for p in fresh.items}
                positions = [by_id.get(p.position_id, p) for p in positions]
        return [p for p in positions if p.uncovered > 0 or p.pending]

    def _failed(self, part: _Part, started: datetime, error: str) -> SessionResult:
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


def _narrowed(session: Session, pairs: Sequence[str]) -> Session:
    wanted = set(pairs)
    return replace(session, pairs=tuple(p for p in session.pairs if p in wanted))


def _stray(session_id: str, pair: str, p: Position) -> BadRecordError:
    where = f"position {p.position_id} of session {session_id}"
    return BadRecordError(where, p.symbol, f"a position of {p.symbol} in the index of {pair}")
