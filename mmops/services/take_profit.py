"""The take-profit service: cover every uncovered position with one post-only sell, once.

``create_batch`` runs four phases for one session:

1. **recover** (per pair, concurrently): a position with a pending marker had an order sent
   whose outcome was never recorded (a crash, a timeout). Its client order id is looked up on
   the exchange first: found live → recorded; not there → the marker is cleared.
2. **price** every position (pure domain pricing; dust is reported, never placed).
3. **allocate** the free balance per base asset across all pairs, oldest first.
4. **place** (per pair, concurrently, each pair's failure isolated): claim ``tp_attempt`` for
   each position and re-read the claimed positions in the same atomic step (one round trip),
   then per batch of at most 15: write the pending markers (one round trip), send, record
   every placed order with its coverage (one round trip), and look up the client id of any
   order whose answer was lost. A batch's outcome is recorded while the next batch is fenced
   and sent (its pending markers cover it meanwhile, as they would after a crash).

Phases 2-4 run per funding group (the pairs of one base asset: pairs of different bases spend
no balance in common, so allocating them apart gives the same grants): a group starts placing
as soon as it is priced and funded, while the next group is priced.

Invariants: the sum of a position's take-profits never exceeds its filled quantity (pending
markers count as covering), and one (position, generation) never has two live orders (the
client order id is derived from them, and claimed before it is sent).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from mmops import logs
from mmops.domain.allocation import (
    Allocation,
    Grant,
    ReservationRequest,
    Shortfall,
    allocate,
    funding_groups,
)
from mmops.domain.exchange import (
    DEFAULT_DEADLINE,
    MAX_BATCH,
    ExchangeOrder,
    OrderRequest,
    PlacementResult,
)
from mmops.domain.ids import client_order_id
from mmops.domain.models import ZERO, Balance, Order, OrderKind, PendingTakeProfit, Position, Side
from mmops.domain.pricing import Dust, TakeProfitQuote, age_in_minutes, price_take_profit
from mmops.domain.records import (
    Coverage,
    Fence,
    ReadResult,
    SessionLease,
    TakeProfitRecord,
    TpStatus,
)
from mmops.domain.tiers import TierPolicy
from mmops.errors import (
    RECOVERABLE,
    ConfigurationError,
    ExchangeRejected,
    LockLost,
    MmopsError,
    OperationalError,
    PostOnlyWouldTake,
    RateLimited,
)
from mmops.ports import BalanceReservations, Clock, Exchange, Positions, TakeProfitClaims
from mmops.services.tp_results import (
    Failed,
    MarketData,
    PairReport,
    Placed,
    Skipped,
    SkipReason,
)

log = logs.get_logger("mmops.take_profit")
T = TypeVar("T")

DEFAULT_CLOCK_SKEW = timedelta(seconds=2)  # how far this host's clock may be off the venue's
DEFAULT_RESERVATION_TTL = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class _Order:
    position: Position
    quote: TakeProfitQuote
    amount: Decimal
    generation: int
    client_order_id: str
    uncovered: Decimal  # the position's, as claimed (what a take-profit must hold to cover it)

    def request(self, deadline: datetime) -> OrderRequest:
        return OrderRequest(
            symbol=self.position.symbol,
            side=Side.SELL,
            amount=self.amount,
            price=self.quote.price,
            client_order_id=self.client_order_id,
            deadline=deadline,
        )

    def fence(self, deadline: datetime, attempt_token: str) -> Fence:
        pending = PendingTakeProfit(self.generation, self.client_order_id, self.amount, deadline)
        return Fence(self.position, pending, attempt_token)


class TakeProfitService:
    def __init__(
        self,
        positions: Positions,
        attempts: TakeProfitClaims,
        exchange: Exchange,
        tiers: TierPolicy,
        clock: Clock,
        *,
        reserve: Mapping[str, Decimal] | None = None,
        dry_run: bool = False,
        deadline: timedelta = DEFAULT_DEADLINE,
        clock_skew: timedelta = DEFAULT_CLOCK_SKEW,
        reservations: BalanceReservations | None = None,
        account: str = "",
        reservation_ttl: timedelta = DEFAULT_RESERVATION_TTL,
        pending_ttl: timedelta | None = None,
    ) -> None:
        if reservations is not None and not account:
            raise ConfigurationError("balance reservations need the account's name")
        self._ledger = reservations
        self._account = account
        self._reservation_ttl = reservation_ttl
        # How long an unsent reservation holds the balance: a worker that dies before sending
        # frees it then. The settlement lock's TTL plus the deadline and skew is enough: past
        # its lock a worker fences nothing more, and an order fenced before lands by then.
        self._pending_ttl = pending_ttl or reservation_ttl
        self._owner = uuid.uuid4().hex  # this service's placements are out of its snapshots
        self._deadline = deadline
        self._skew = clock_skew
        self._positions = positions
        self._attempts = attempts
        self._exchange = exchange
        self._tiers = tiers
        self._clock = clock
        self._reserve = dict(reserve or {})
        self.dry_run = dry_run

    async def create_batch(
        self,
        session_id: str,
        positions_by_pair: Mapping[str, Sequence[Position]],
        data: MarketData,
        earlier: Mapping[str, PairReport] | None = None,
        lease: SessionLease | None = None,
    ) -> dict[str, PairReport]:
        """Cover the given uncovered positions; return what happened, per pair: a copy of
        ``earlier`` (what the run found before, such as repricing) with this step's outcomes
        added. ``earlier`` itself is left as it was.

        ``lease`` is this worker's hold on the session's lock: every order is fenced against
        it before it is sent. Raises LockLost, having sent nothing more, once it is lost."""
        reports = {pair: report.copy() for pair, report in (earlier or {}).items()}
        for pair in positions_by_pair:
            reports.setdefault(pair, PairReport(pair))
        ready = await self._per_pair(
            reports,
            {
                p: self._recover(session_id, p, ps, reports[p])
                for p, ps in positions_by_pair.items()
            },
        )
        now = self._clock.now()
        snapshot = data.fetched_at
        if self._reserves and snapshot is None and any(ready.values()):
            # A snapshot of unknown age: take a fresh one (once, for every group).
            snapshot, data = await self._fresh_snapshot(data, now)
        placing: list[asyncio.Task[None]] = []
        try:
            # Pairs of different base assets spend no balance in common: each group is priced,
            # allocated and reserved on its own, and starts placing at once. The next group is
            # priced while the first batches wait out the exchange's latency, and the groups'
            # later batches do not all wake (and queue for the CPU) at the same moment.
            for group in funding_groups(ready, data.markets):
                mine = {pair: ready[pair] for pair in group}
                grants, held = await self._fund(mine, data, snapshot, reports, now)
                placing.append(
                    asyncio.create_task(
                        self._place_group(session_id, grants, held, data, reports, now, lease)
                    )
                )
                await asyncio.sleep(0)  # the groups placing send before the next is priced
        finally:
            outcomes = await asyncio.gather(*placing, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return reports

    @property
    def _reserves(self) -> bool:
        return self._ledger is not None and not self.dry_run

    async def _fund(
        self,
        ready: Mapping[str, Sequence[Position]],
        data: MarketData,
        snapshot: datetime | None,
        reports: dict[str, PairReport],
        now: datetime,
    ) -> tuple[dict[str, list[Grant]], dict[str, tuple[str, Decimal]]]:
        """Price and allocate one funding group (and reserve what it is granted): the grants
        per pair, and per asset the reservation held (asset → (reservation id, amount))."""
        quotes = self._price(ready, data, reports, now)
        allocation = allocate(quotes, data.balances, data.markets, self._reserve)
        held: dict[str, tuple[str, Decimal]] = {}
        if self._reserves:
            assert snapshot is not None  # create_batch took one
            allocation, held = await self._reserve_balance(quotes, allocation, data, snapshot, now)
        grants: dict[str, list[Grant]] = {pair: [] for pair in ready}
        for grant in allocation.granted:
            grants[grant.quote.symbol].append(grant)
        for short in allocation.insufficient:
            detail = f"missing {short.missing} of {short.quote.amount}, granted {short.granted}"
            reports[short.quote.symbol].skipped.append(
                Skipped(short.quote.position_id, SkipReason.INSUFFICIENT_BALANCE, detail)
            )
        return grants, held

    async def _place_group(
        self,
        session_id: str,
        grants: Mapping[str, Sequence[Grant]],
        held: Mapping[str, tuple[str, Decimal]],
        data: MarketData,
        reports: dict[str, PairReport],
        now: datetime,
        lease: SessionLease | None,
    ) -> None:
        """Place one funding group's grants (its pairs concurrently), then settle its
        reservations."""
        sent: dict[str, Decimal] | None = None
        try:
            sent = await self._per_pair(
                reports,
                {
                    p: self._place_pair(session_id, p, g, data, reports[p], now, lease)
                    for p, g in grants.items()
                },
            )
        finally:
            if held:
                await self._settle_reservations(held, grants, sent, data)

    # -- 3b. reserve (one account, many workers) ----------------------------------------

    async def _reserve_balance(
        self,
        quotes: Sequence[TakeProfitQuote],
        allocation: Allocation,
        data: MarketData,
        snapshot: datetime,
        now: datetime,
    ) -> tuple[Allocation, dict[str, tuple[str, Decimal]]]:
        """Reserve each base asset's granted total in the account's ledger, so a worker
        settling another session on the account cannot spend it too. An asset whose total
        no longer fits is allocated again within what the ledger left, and asked once more;
        what still does not fit is reported short (insufficient balance), never retried here.
        Returns the allocation that may be placed and, per asset, the reservation held."""
        assert self._ledger is not None
        if not allocation.granted:
            return allocation, {}
        demand: dict[str, Decimal] = {}
        for g in allocation.granted:
            base = data.markets[g.quote.symbol].base
            demand[base] = demand.get(base, ZERO) + g.amount
        held: dict[str, tuple[str, Decimal]] = {}
        try:
            for asset, amount in demand.items():
                allocation = await self._reserve_asset(
                    quotes, allocation, data, asset, amount, snapshot, now, held
                )
        except BaseException:
            await self._release_all(held)  # nothing was sent yet: give it all back
            raise
        return allocation, held

    async def _reserve_asset(
        self,
        quotes: Sequence[TakeProfitQuote],
        allocation: Allocation,
        data: MarketData,
        asset: str,
        amount: Decimal,
        snapshot: datetime,
        now: datetime,
        held: dict[str, tuple[str, Decimal]],
    ) -> Allocation:
        """Reserve ``amount`` of ``asset`` (into ``held``), or less after one reallocation
        within what the ledger left, or nothing; return the allocation to place."""
        assert self._ledger is not None
        free = allocation.available[asset]
        for _ in range(2):
            rid = uuid.uuid4().hex
            answer = await self._ledger.reserve(
                ReservationRequest(
                    self._account, asset, rid, amount, free, snapshot, now,
                    self._pending_ttl, self._owner,
                )
            )  # fmt: skip
            if answer.granted:
                held[asset] = (rid, amount)
                return allocation
            log.info("tp.balance_reserved_elsewhere", asset=asset, available=str(answer.available))
            allocation = _reallocated(allocation, quotes, asset, answer.available, data)
            amount = _granted_of(allocation, asset, data)  # asked of the same snapshot
            if not amount:
                return allocation
        return _reallocated(allocation, quotes, asset, ZERO, data)

    async def _release_all(self, held: Mapping[str, tuple[str, Decimal]]) -> None:
        assert self._ledger is not None
        for asset, (rid, _) in held.items():
            try:
                await self._ledger.release(self._account, rid)
            except MmopsError as e:  # it expires by its TTL
                log.warning("tp.reservation_not_released", asset=asset, error=str(e))

    async def _fresh_snapshot(self, data: MarketData, now: datetime) -> tuple[datetime, MarketData]:
        """Balances fetched now, stamped before the call (one more balance call, only when the
        caller's snapshot carries no ``fetched_at``), and the data with them. If the fetch
        fails, keep the balances and assume the snapshot is as old as a reservation lives:
        placed reservations of that window count against it (safe, maybe short)."""
        stamp = self._clock.now()
        try:
            balances = await self._exchange.balances()
        except RECOVERABLE as e:
            log.warning("tp.balance_refresh_failed", error=str(e))
            return now - self._reservation_ttl, data
        return stamp, replace(data, balances=balances, fetched_at=stamp)

    async def _settle_reservations(
        self,
        held: Mapping[str, tuple[str, Decimal]],
        grants: Mapping[str, Sequence[Grant]],
        sent: Mapping[str, Decimal] | None,
        data: MarketData,
    ) -> None:
        """After the batches: keep each reservation as what its orders may hold on the
        exchange (placed, or sent with the answer lost); drop what was refused or never sent.
        A pair that failed as a whole keeps its whole grant (its outcome is unknown)."""
        assert self._ledger is not None
        kept: dict[str, Decimal] = {asset: ZERO for asset in held}
        for pair, pair_grants in grants.items():
            if not pair_grants:
                continue
            base = data.markets[pair].base
            if base not in kept:
                continue
            outcome = None if sent is None else sent.get(pair)
            amount = sum((g.amount for g in pair_grants), ZERO) if outcome is None else outcome
            kept[base] += amount
        at = self._clock.now()
        for asset, (rid, _) in held.items():
            try:
                await self._ledger.placed(
                    self._account, rid, kept[asset], at, self._reservation_ttl
                )
            except MmopsError as e:  # it expires by its TTL
                log.warning("tp.reservation_not_settled", asset=asset, error=str(e))

    async def _per_pair(
        self, reports: dict[str, PairReport], work: Mapping[str, Coroutine[Any, Any, T]]
    ) -> dict[str, T]:
        """Run one coroutine per pair concurrently; a pair that raises is reported, not fatal."""
        outcomes = await asyncio.gather(*work.values(), return_exceptions=True)
        result: dict[str, T] = {}
        for pair, outcome in zip(work, outcomes, strict=True):
            if isinstance(outcome, OperationalError | ConfigurationError | LockLost):
                raise outcome  # a store down, the key refused, the lock lost: stop at once
            if isinstance(outcome, Exception):
                reports[pair].error = f"{type(outcome).__name__}: {outcome}"
                log.error("tp.pair_failed", pair=pair, error=reports[pair].error)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                result[pair] = outcome
        return result

    # -- 1. recover ---------------------------------------------------------------------

    async def _recover(
        self, session_id: str, pair: str, positions: Sequence[Position], report: PairReport
    ) -> list[Position]:
        """Resolve pending markers; return the positions that can be priced now."""
        clean = [p for p in positions if not p.pending]
        pending = [p for p in positions if p.pending]
        if not pending or self.dry_run:
            for p in pending:
                report.skipped.append(Skipped(p.position_id, SkipReason.AWAITING_LOOKUP))
            return clean
        tokens = await self._attempts.acquire(session_id, [p.position_id for p in pending])
        try:
            for p in pending:
                if p.position_id not in tokens:
                    report.skipped.append(Skipped(p.position_id, SkipReason.ATTEMPT_IN_PROGRESS))
                    continue
                await self._resolve(p, report)
            fresh = await self._positions.read_many(session_id, list(tokens))
            report.bad_records += len(fresh.bad)
        finally:
            await self._attempts.release(session_id, tokens)
        now = self._clock.now()
        for p in fresh.items:
            if any(m.in_flight(now, self._skew) for m in p.pending):
                report.skipped.append(Skipped(p.position_id, SkipReason.IN_FLIGHT))
            elif p.pending:
                report.skipped.append(Skipped(p.position_id, SkipReason.AWAITING_LOOKUP))
            else:
                clean.append(p)
        return clean

    async def _resolve(self, position: Position, report: PairReport) -> None:
        """Settle each pending marker whose order can no longer be in flight: found on the
        exchange → recorded; not there → forgotten (its generation is spent, so the next order
        gets a new client id). A marker before its deadline (plus clock skew) is left alone:
        its order may still land, and looking it up now would prove nothing."""
        now = self._clock.now()
        for pending in position.pending:
            if pending.in_flight(now, self._skew):
                continue
            try:
                order = await self._exchange.find_by_client_id(
                    position.symbol, pending.client_order_id
                )
            except RECOVERABLE as e:
                log.warning("tp.lookup_failed", position=position.position_id, error=str(e))
                continue
            if order is not None and (order.live or order.filled > 0):
                # Live, or cancelled after selling part: what it holds or sold stays covered
                # (a cancelled remainder is released by the next run's check of live orders).
                amount = order.amount if order.live else order.filled
                meta = _metadata(
                    position,
                    cid=pending.client_order_id,
                    generation=pending.generation,
                    price=order.price,
                    amount=amount,
                    quote=None,
                    now=self._clock.now(),
                )
                fully = amount >= position.uncovered + pending.amount
                coverage = _coverage(
                    position, pending.generation, order.id, amount, meta, fully, order.created_at
                )
                await self._positions.record_coverage([coverage])
                report.recovered += 1
                log.info(
                    "tp.recovered",
                    session=position.session_id,
                    pair=position.symbol,
                    position=position.position_id,
                    order=order.id,
                )
            else:
                await self._positions.clear_pending([(position, pending.generation)])

    # -- 2. price -----------------------------------------------------------------------

    def _price(
        self,
        ready: Mapping[str, Sequence[Position]],
        data: MarketData,
        reports: dict[str, PairReport],
        now: datetime,
    ) -> list[TakeProfitQuote]:
        quotes: list[TakeProfitQuote] = []
        for pair, positions in ready.items():
            market, ticker = data.markets.get(pair), data.tickers.get(pair)
            if market is None or ticker is None:
                reports[pair].error = f"no market or ticker for {pair}"
                continue
            for p in positions:
                if p.uncovered == 0:
                    reports[pair].skipped.append(Skipped(p.position_id, SkipReason.ALREADY_COVERED))
                    continue
                if not market.status.admits_maker_sells:  # e.g. Kraken's cancel_only mode
                    reports[pair].skipped.append(
                        Skipped(p.position_id, SkipReason.PAIR_RESTRICTED, market.status.value)
                    )
                    continue
                result = self._quote(p, now, data)
                if isinstance(result, Dust):
                    reports[pair].skipped.append(
                        Skipped(p.position_id, SkipReason.DUST, result.reason.value)
                    )
                else:
                    quotes.append(result)
        return quotes

    def _quote(self, p: Position, now: datetime, data: MarketData) -> TakeProfitQuote | Dust:
        tiers = self._tiers.for_pair(p.symbol)
        age = age_in_minutes(p.opened_at, now)
        return price_take_profit(p, age, data.markets[p.symbol], data.tickers[p.symbol], tiers)

    # -- 4. place -----------------------------------------------------------------------

    async def _place_pair(
        self,
        session_id: str,
        pair: str,
        grants: Sequence[Grant],
        data: MarketData,
        report: PairReport,
        now: datetime,
        lease: SessionLease | None,
    ) -> Decimal:
        """Place the pair's grants; return the amount its orders may hold on the exchange."""
        if self.dry_run:
            for g in grants:
                cid = client_order_id(session_id, g.quote.position_id, 0)
                report.placed.append(
                    Placed(
                        position_id=g.quote.position_id,
                        order_id="dry-run",
                        client_order_id=cid,
                        price=g.quote.price,
                        amount=g.amount,
                        tier_minutes=g.quote.tier_minutes,
                        dry_run=True,
                    )
                )
            return ZERO
        # Claimed and read in one atomic step: the orders are built from the state they hold.
        tokens, fresh = await self._attempts.acquire_reading(
            session_id, [g.quote.position_id for g in grants]
        )
        try:
            orders = self._claimed_orders(session_id, grants, tokens, fresh, data, report, now)
            return await self._send_batches(session_id, pair, orders, tokens, lease, report, now)
        finally:
            await self._attempts.release(session_id, tokens)

    async def _send_batches(
        self,
        session_id: str,
        pair: str,
        orders: Sequence[_Order],
        tokens: Mapping[str, str],
        lease: SessionLease | None,
        report: PairReport,
        now: datetime,
    ) -> Decimal:
        """Send the pair's orders in batches, one batch after another; return the amount
        they may hold. A batch's take-profits are recorded while the next batch is fenced and
        sent: until they are, their pending markers stand for them, as after a crash. Every
        batch sent has its recording started, and finished (or failed), before this returns
        or raises; a failed recording sends nothing more (at most the batch already on its
        way when it failed) and is raised."""
        sent = ZERO
        latest: asyncio.Future[None] | None = None  # the last batch's recording
        try:
            for start in range(0, len(orders), MAX_BATCH):
                if latest is not None and latest.done():
                    done, latest = latest, None
                    done.result()  # the batch before failed to record: send nothing more
                chunk = orders[start : start + MAX_BATCH]
                # The venue's trading counter may hold a batch back (Kraken Starter: 60 orders
                # a pair, -1/s): wait here, so the fence stamps the deadline after the wait.
                await self._exchange.admit(pair, len(chunk))
                fenced, deadline = await self._fence(session_id, chunk, tokens, lease, report)
                answers = await self._send(fenced, deadline)
                held, coverages, clears = await self._outcomes(fenced, answers, report, now)
                sent += held
                earlier, latest = latest, asyncio.ensure_future(self._record(coverages, clears))
                if earlier is not None:
                    await asyncio.shield(earlier)  # a cancel here leaves it to finish
        except BaseException:
            if latest is not None:
                await _recorded_anyway(latest)
            raise
        if latest is not None:
            await asyncio.shield(latest)
        return sent

    async def _record(
        self, coverages: Sequence[Coverage], clears: Sequence[tuple[Position, int]]
    ) -> None:
        """Record a batch's take-profits with their coverage, and forget the pending markers
        of the orders the exchange refused."""
        await self._positions.record_coverage(coverages)
        await self._positions.clear_pending(clears)

    async def _fence(
        self,
        session_id: str,
        chunk: Sequence[_Order],
        tokens: Mapping[str, str],
        lease: SessionLease | None,
        report: PairReport,
    ) -> tuple[list[_Order], datetime]:
        """Fence a batch right before it is sent: its pending markers, with the deadline the
        orders carry to the exchange, are written only while the session's lock and each
        position's attempt are still this worker's. What is not fenced is not sent."""
        if lease is not None and lease.lost:
            raise LockLost(session_id)
        deadline = self._clock.now() + self._deadline
        fences = [o.fence(deadline, tokens[o.position.position_id]) for o in chunk]
        fenced = await self._positions.fence(session_id, lease, fences)
        for o in chunk:
            if o.position.position_id not in fenced:  # its attempt expired or moved on
                report.skipped.append(
                    Skipped(o.position.position_id, SkipReason.ATTEMPT_IN_PROGRESS, "fence")
                )
        return [o for o in chunk if o.position.position_id in fenced], deadline

    def _claimed_orders(
        self,
        session_id: str,
        grants: Sequence[Grant],
        tokens: Mapping[str, str],
        fresh: ReadResult[Position],
        data: MarketData,
        report: PairReport,
        now: datetime,
    ) -> list[_Order]:
        """Build the orders of the positions this worker claimed from their state as read
        with the claim (``fresh``), not as priced before it."""
        for g in grants:
            if g.quote.position_id not in tokens:
                report.skipped.append(Skipped(g.quote.position_id, SkipReason.ATTEMPT_IN_PROGRESS))
        report.bad_records += len(fresh.bad)
        by_id = {p.position_id: p for p in fresh.items}
        orders = []
        for g in grants:
            p = by_id.get(g.quote.position_id)
            if p is None or g.quote.position_id not in tokens:
                continue
            uncovered = p.uncovered
            if p.pending or uncovered == 0:
                reason = SkipReason.AWAITING_LOOKUP if p.pending else SkipReason.ALREADY_COVERED
                report.skipped.append(Skipped(p.position_id, reason))
                continue
            quote = g.quote
            if uncovered != g.quote.uncovered:  # a fill or a TP since it was priced
                repriced = self._quote(p, now, data)
                if isinstance(repriced, Dust):
                    report.skipped.append(
                        Skipped(p.position_id, SkipReason.DUST, repriced.reason.value)
                    )
                    continue
                quote = repriced
            amount = min(quote.amount, g.amount)
            cid = client_order_id(session_id, p.position_id, p.generation)
            orders.append(_Order(p, quote, amount, p.generation, cid, uncovered))
        return orders

    async def _send(self, chunk: Sequence[_Order], deadline: datetime) -> list[PlacementResult]:
        """Send one fenced batch: an answer per order (a failed call: its error in each)."""
        if not chunk:
            return []
        requests = [o.request(deadline) for o in chunk]
        try:
            return await self._exchange.place_batch(requests)
        except RECOVERABLE as e:  # the whole call failed: every outcome is unknown
            return [PlacementResult(r, error=e) for r in requests]

    async def _outcomes(
        self,
        chunk: Sequence[_Order],
        results: Sequence[PlacementResult],
        report: PairReport,
        now: datetime,
    ) -> tuple[Decimal, list[Coverage], list[tuple[Position, int]]]:
        """A sent batch's outcomes, reported, with a lost answer looked up: the amount the
        batch may hold (placed or answer lost), the coverages to record and the pending
        markers to clear (orders refused)."""
        if not chunk:
            return ZERO, [], []
        sent = ZERO
        coverages: list[Coverage] = []
        clears: list[tuple[Position, int]] = []
        # One bound logger for the batch (one pair of one session): binding per event costs
        # more than the event when its level is off.
        first = chunk[0].position
        pair_log = log.bind(session=first.session_id, pair=first.symbol)
        for o, r in zip(chunk, results, strict=True):
            order = r.order
            if order is not None and not order.live:  # accepted, then cancelled by the engine
                r = PlacementResult(r.request, error=_voided(order))
                order = None
            if order is None and not _refused(r.error):
                order = await self._lookup(o)  # the answer was lost: did it land?
                if order is None:
                    sent += o.amount  # it may still be resting on the exchange
                    report.failed.append(
                        Failed(
                            o.position.position_id,
                            type(r.error).__name__,
                            f"{r.error}; kept pending, next run looks it up",
                        )
                    )
                    continue
            if order is not None:
                sent += order.amount
                meta = _metadata(
                    o.position,
                    cid=o.client_order_id,
                    generation=o.generation,
                    price=order.price,
                    amount=order.amount,
                    quote=o.quote,
                    now=now,
                )
                fully = order.amount >= o.uncovered
                coverages.append(
                    _coverage(o.position, o.generation, order.id, order.amount, meta, fully, now)
                )
                report.placed.append(
                    Placed(
                        position_id=o.position.position_id,
                        order_id=order.id,
                        client_order_id=o.client_order_id,
                        price=order.price,
                        amount=order.amount,
                        tier_minutes=o.quote.tier_minutes,
                    )
                )
                pair_log.info(
                    "tp.placed",
                    position=o.position.position_id,
                    order=order.id,
                    price=str(order.price),
                    amount=str(order.amount),
                    tier=o.quote.tier_minutes,
                )
            else:
                clears.append((o.position, o.generation))
                report.failed.append(
                    Failed(o.position.position_id, type(r.error).__name__, str(r.error))
                )
                pair_log.warning("tp.rejected", position=o.position.position_id, error=str(r.error))
        return sent, coverages, clears

    async def _lookup(self, o: _Order) -> ExchangeOrder | None:
        try:
            found = await self._exchange.find_by_client_id(o.position.symbol, o.client_order_id)
        except RECOVERABLE:
            return None
        return found if found is not None and found.live else None


async def _recorded_anyway(recording: asyncio.Future[None]) -> None:
    """Wait for a batch's recording while the pair is failing already: its own error is
    logged, not raised over the one on its way (a cancellation stays a cancellation)."""
    try:
        await asyncio.shield(recording)
    except Exception as e:
        log.error("tp.record_failed", error=f"{type(e).__name__}: {e}")


def _base(quote: TakeProfitQuote, data: MarketData) -> str:
    return data.markets[quote.symbol].base


def _granted_of(allocation: Allocation, asset: str, data: MarketData) -> Decimal:
    return sum((g.amount for g in allocation.granted if _base(g.quote, data) == asset), ZERO)


def _reallocated(
    allocation: Allocation,
    quotes: Sequence[TakeProfitQuote],
    asset: str,
    available: Decimal,
    data: MarketData,
) -> Allocation:
    """``allocation`` with ``asset``'s quotes funded again, oldest first, from ``available``
    (what the account's ledger leaves): the rest of them become shortfalls. A quote cut short
    is granted only if what it leaves could be placed later: a remainder below the market's
    minimum (dust) could never be, so such a position waits, whole, for a later run."""
    mine = [q for q in quotes if _base(q, data) == asset]
    again = allocate(mine, {asset: Balance(asset, available, ZERO, available)}, data.markets)
    whole = [g for g in again.granted if not _leaves_dust(g, data)]
    granted = [g for g in allocation.granted if _base(g.quote, data) != asset]
    short: list[Shortfall] = [s for s in allocation.insufficient if _base(s.quote, data) != asset]
    return Allocation(
        (*granted, *whole),
        (*short, *again.insufficient),
        {**allocation.available, asset: available},
        {**allocation.remaining, asset: available - sum((g.amount for g in whole), ZERO)},
    )


def _leaves_dust(g: Grant, data: MarketData) -> bool:
    """Whether a grant cut short leaves a remainder below the market's minimums."""
    rest = g.quote.amount - g.amount
    market = data.markets[g.quote.symbol]
    return rest > 0 and (rest < market.min_amount or rest * g.quote.price < market.min_cost)


def _coverage(
    p: Position,
    generation: int,
    order_id: str,
    amount: Decimal,
    take_profit: TakeProfitRecord,
    fully_covered: bool,
    now: datetime,
) -> Coverage:
    """The coverage of a take-profit placed for ``p``, with the take-profit as an order of the
    session, recorded in the same atomic step, so its fills always have an order to belong to."""
    order = Order(
        session_id=p.session_id,
        order_id=order_id,
        symbol=p.symbol,
        side=Side.SELL,
        price=take_profit.price,
        amount=amount,
        created_at=now,
        kind=OrderKind.TAKE_PROFIT,
        client_order_id=take_profit.client_order_id,
    )
    return Coverage(p, generation, order_id, amount, take_profit, fully_covered, order)


def _voided(order: ExchangeOrder) -> ExchangeRejected:
    """Why an order the exchange accepted covers nothing: it closed at once, unfilled (a
    post-only sell that would have crossed is accepted, then cancelled by the engine)."""
    return PostOnlyWouldTake(f"order {order.id} accepted, then {order.status.value} at once")


def _refused(error: MmopsError | None) -> bool:
    """The exchange definitely did not place it (so the pending marker can go)."""
    return isinstance(error, ExchangeRejected | RateLimited)


def _metadata(
    p: Position,
    *,
    cid: str,
    generation: int,
    price: Decimal,
    amount: Decimal,
    quote: TakeProfitQuote | None,
    now: datetime,
) -> TakeProfitRecord:
    """What is kept about a take-profit placed (or, without its ``quote``, recovered) now."""
    return TakeProfitRecord(
        position=p.position_id,
        pair=p.symbol,
        price=price,
        amount=amount,
        tier=quote.tier_minutes if quote else None,
        markup=quote.markup if quote else None,
        client_order_id=cid,
        generation=generation,
        created_at=now,
        status=TpStatus.OPEN,
    )
