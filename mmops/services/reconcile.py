"""Reconciliation: mmops believes the exchange, not its own notes.

Every take-profit mmops believes live (``tp_order`` status ``open``, held in its position's
coverage) is compared with the account's open orders (one snapshot, all pairs) and, for those
not among them, with the order as the exchange shows it now (fetched in batches):

* open: nothing to do;
* filled: its executions are recorded as fills of the session (by the venue's trade ids, the
  ones the fill feed records, so nothing counts twice) and it is marked filled: it keeps
  covering what it sold;
* cancelled, expired or rejected (by the engine, e.g. a crossing post-only, or by a person):
  what it sold is recorded, its coverage released, and the position is back in the uncovered
  index, so the run that found it covers it again;
* not found on the exchange: reported ``absent`` and left alone (a later run looks again);
* a look-up that failed: reported, nothing changed.

Open sell orders of the session's pairs that are neither one of its take-profits nor a
recorded order of the session are reported ``reported_unknown`` and never touched. A dry run
reports what would be done and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from enum import StrEnum
from typing import Any

from mmops import logs
from mmops.domain.exchange import ExchangeOrder
from mmops.domain.groups import lock_scopes
from mmops.domain.models import ZERO, Fill, OrderStatus, Position, Session, Side
from mmops.domain.records import ReadResult, TpStatus
from mmops.errors import RECOVERABLE
from mmops.ports import Exchange, FillWriter, Orders, OrderWriter, Positions, SessionLocks

log = logs.get_logger("mmops.reconcile")

FETCH_BATCH = 50  # Kraken's QueryOrders takes up to 50 txids a call


class ReconcileAction(StrEnum):
    """What reconciliation did (or, in a dry run, would do) about one order."""

    NONE = "none"  # the exchange agrees: open
    RECORDED_FILL = "recorded_fill"  # filled: executions recorded, marked filled
    RELEASED = "released"  # cancelled/expired/rejected: coverage released, covered again
    REPORTED_UNKNOWN = "reported_unknown"  # an open sell that is not the session's: untouched
    ABSENT = "absent"  # the exchange does not know the order: left alone, looked at again
    LOOKUP_FAILED = "lookup_failed"  # the exchange could not answer: nothing changed


@dataclass(frozen=True, slots=True)
class ReconcileRow:
    """One order: what mmops believed, what the exchange says, what was done."""

    session: str
    pair: str
    order_id: str
    client_order_id: str | None
    position_id: str | None  # None for an unknown order
    believed: TpStatus | None  # None: mmops had no take-profit of this id
    exchange: OrderStatus | None  # None: absent, or not looked up
    filled: Decimal | None  # base quantity the exchange shows executed
    action: ReconcileAction
    amount: Decimal = ZERO  # the take-profit's amount as recorded (the order's if unknown)
    detail: str = ""

    @property
    def live_on_exchange(self) -> bool:
        """The exchange shows it open or filled: it holds (or held) its quantity."""
        return self.exchange in (OrderStatus.OPEN, OrderStatus.FILLED)

    def sort_key(self) -> tuple[str, str, str]:
        return (self.session, self.pair, self.order_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "session": self.session,
            "pair": self.pair,
            "order_id": self.order_id,
            "client_order_id": self.client_order_id,
            "position_id": self.position_id,
            "believed": None if self.believed is None else self.believed.value,
            "exchange": None if self.exchange is None else self.exchange.value,
            "filled": None if self.filled is None else str(self.filled),
            "amount": str(self.amount),
            "action": self.action.value,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    """Rows sorted by (session, pair, order id), so two reports diff line by line."""

    rows: tuple[ReconcileRow, ...] = ()
    dry_run: bool = False
    fills_recorded: int = 0  # executions newly recorded (replays not counted)

    @classmethod
    def of(
        cls, rows: Iterable[ReconcileRow], dry_run: bool = False, fills_recorded: int = 0
    ) -> ReconcileReport:
        return cls(tuple(sorted(rows, key=ReconcileRow.sort_key)), dry_run, fills_recorded)

    def merged(self, other: ReconcileReport) -> ReconcileReport:
        return ReconcileReport.of(
            [*self.rows, *other.rows], self.dry_run, self.fills_recorded + other.fills_recorded
        )

    def pair(self, pair: str) -> list[ReconcileRow]:
        return [r for r in self.rows if r.pair == pair]

    def counts(self, pair: str | None = None) -> dict[str, int]:
        """``reconciled`` (take-profits checked) and one count per action taken."""
        rows = self.rows if pair is None else tuple(self.pair(pair))
        found = {"reconciled": sum(r.believed is not None for r in rows)}
        for action in ReconcileAction:
            found[action.value] = sum(r.action is action for r in rows)
        return found

    def not_live(self) -> dict[str, Decimal]:
        """Per position, the take-profit quantity mmops counts as covering that the exchange
        shows closed without selling it (cancelled, expired, rejected)."""
        return self._per_position(lambda r: r.exchange is not None and not r.live_on_exchange)

    def unconfirmed(self) -> dict[str, Decimal]:
        """Per position, the take-profit quantity the exchange did not confirm either way
        (absent from its books, or the look-up failed)."""
        return self._per_position(lambda r: r.exchange is None)

    def _per_position(self, which: Callable[[ReconcileRow], bool]) -> dict[str, Decimal]:
        found: dict[str, Decimal] = {}
        for r in self.rows:
            if r.believed is TpStatus.OPEN and r.position_id and which(r):
                left = max(ZERO, r.amount - (r.filled or ZERO))
                found[r.position_id] = found.get(r.position_id, ZERO) + left
        return found

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "counts": self.counts(),
            "fills_recorded": self.fills_recorded,
            "rows": [r.to_dict() for r in self.rows],
        }


@dataclass(slots=True)
class _Believed:
    position: Position
    order_id: str
    client_order_id: str
    amount: Decimal


@dataclass(slots=True)
class _Run:
    session: Session
    dry_run: bool
    rows: list[ReconcileRow] = field(default_factory=list)
    fills: int = 0


class Reconciler:
    """Compares the take-profits mmops believes live with the exchange and acts on the
    difference (module docstring)."""

    def __init__(
        self,
        positions: Positions,
        orders: Orders,
        order_writer: OrderWriter,
        fills: FillWriter,
        exchange: Exchange,
        *,
        dry_run: bool = False,
        locks: SessionLocks | None = None,
        group_pairs: int = 0,
    ) -> None:
        self._locks = locks
        self._group_pairs = group_pairs  # a split session has a lock per group too
        self._positions = positions
        self._orders = orders
        self._order_writer = order_writer
        self._fills = fills
        self._exchange = exchange
        self.dry_run = dry_run

    async def session(
        self,
        session: Session,
        pairs: Sequence[str] | None = None,
        *,
        open_orders: Sequence[ExchangeOrder] | None = None,
        dry_run: bool | None = None,
        report_unknown: bool = True,
        positions: Mapping[str, ReadResult[Position]] | None = None,
    ) -> ReconcileReport:
        """Reconcile a session's take-profits (of ``pairs``, default all) with the exchange.

        ``open_orders`` is the account's open orders (all pairs) if the caller fetched them
        already; otherwise they are asked for once. ``report_unknown`` also lists the open
        sells of the pairs that are no order of this session (one look-up each: with many
        sessions on one account, every other session's take-profits are such sells, so
        settlement runs leave it to ``mmops reconcile``). ``dry_run`` (default: the reconciler's)
        reports and changes nothing. ``positions`` are the pairs' positions as the caller
        just read them (``Positions.all``), so they are not read twice; a pair it lacks is
        read. A look-up that fails is reported, never raised; raises only what the stores
        raise (StoreUnavailable).
        """
        wanted = [p for p in session.pairs if pairs is None or p in pairs]
        run = _Run(session, self.dry_run if dry_run is None else dry_run)
        believed = await self._believed(session.id, wanted, positions or {})
        if open_orders is None:
            try:
                open_orders = await self._exchange.open_orders()
            except RECOVERABLE as e:
                log.warning("reconcile.open_orders_failed", session=session.id, error=str(e))
                run.rows.extend(_row(run, b, None, ReconcileAction.LOOKUP_FAILED, str(e))
                                for b in believed)  # fmt: skip
                return ReconcileReport.of(run.rows, run.dry_run)
        open_by_id = {o.id: o for o in open_orders}
        missing = []
        for b in believed:
            order = open_by_id.get(b.order_id)
            if order is not None:
                run.rows.append(_row(run, b, order, ReconcileAction.NONE))
            else:
                missing.append(b)
        await self._settle_missing(run, missing)
        if report_unknown:
            known = {b.order_id for b in believed}
            await self._unknown(run, wanted, [o for o in open_orders if o.id not in known])
        report = ReconcileReport.of(run.rows, run.dry_run, run.fills)
        if any(r.action is not ReconcileAction.NONE for r in report.rows):
            log.info("reconcile.done", session=session.id, dry_run=run.dry_run,
                     **report.counts())  # fmt: skip
        return report

    async def locked(self, session: Session) -> ReconcileReport:
        """Reconcile the whole session while holding its settlement locks (its own and, when
        it is settled in groups, each group's), so no settlement run changes it meanwhile
        (``mmops reconcile``). Raises LockNotAcquired when another worker holds one."""
        if self._locks is None:
            return await self.session(session)
        scopes = lock_scopes(session.pairs, self._group_pairs)
        async with self._locks.hold_all(session.id, scopes, wait=0):
            return await self.session(session)

    async def _believed(
        self, session_id: str, pairs: Sequence[str], known: Mapping[str, ReadResult[Position]]
    ) -> list[_Believed]:
        """The take-profits held in the pairs' positions whose record says ``open``."""
        held: list[tuple[Position, str, Decimal]] = []
        for pair in pairs:
            read = known.get(pair)
            if read is None:
                read = await self._positions.all(session_id, pair)
            held.extend(
                (p, order_id, amount)
                for p in read.items
                if p.symbol == pair
                for order_id, amount in p.take_profits
            )
        if not held:
            return []
        read_tps = await self._positions.tp_orders(session_id, [oid for _, oid, _ in held])
        records = {oid: r for oid, r in read_tps.items if r.status is TpStatus.OPEN}
        return [
            _Believed(p, oid, records[oid].client_order_id, amount)
            for p, oid, amount in held
            if oid in records
        ]

    async def _settle_missing(self, run: _Run, missing: Sequence[_Believed]) -> None:
        """Fetch the believed-open take-profits absent from the open orders, in batches, and
        act on what the exchange says of each."""
        for start in range(0, len(missing), FETCH_BATCH):
            chunk = missing[start : start + FETCH_BATCH]
            try:
                found = await self._exchange.fetch_orders([b.order_id for b in chunk])
            except RECOVERABLE as e:
                log.warning("reconcile.lookup_failed", session=run.session.id, error=str(e))
                run.rows.extend(_row(run, b, None, ReconcileAction.LOOKUP_FAILED, str(e))
                                for b in chunk)  # fmt: skip
                continue
            for b in chunk:
                order = found.get(b.order_id)
                if order is None:
                    run.rows.append(_row(run, b, None, ReconcileAction.ABSENT))
                else:
                    run.rows.append(await self._act(run, b, order))

    async def _act(self, run: _Run, b: _Believed, order: ExchangeOrder) -> ReconcileRow:
        if order.status is OrderStatus.OPEN:
            return _row(run, b, order, ReconcileAction.NONE)
        filled = order.status is OrderStatus.FILLED
        action = ReconcileAction.RECORDED_FILL if filled else ReconcileAction.RELEASED
        if run.dry_run:
            return _row(run, b, order, action)
        if order.filled > 0:
            try:
                run.fills += await self._record_trades(run.session.id, order)
            except RECOVERABLE as e:
                log.warning("reconcile.trades_failed", session=run.session.id,
                            order=order.id, error=str(e))  # fmt: skip
                return _row(run, b, order, ReconcileAction.LOOKUP_FAILED, f"trades: {e}")
        await self._note_order(run.session.id, order)
        s, p = run.session.id, b.position
        if filled:
            await self._positions.set_tp_status(s, b.order_id, TpStatus.FILLED)
            log.info("reconcile.filled", session=s, pair=p.symbol, position=p.position_id,
                     order=b.order_id)  # fmt: skip
        else:
            await self._positions.release_coverage(p, b.order_id, TpStatus.GONE, order.filled)
            log.warning("tp.gone", session=s, pair=p.symbol, position=p.position_id,
                        order=b.order_id, status=order.status.value)  # fmt: skip
        return _row(run, b, order, action)

    async def _record_trades(self, session_id: str, order: ExchangeOrder) -> int:
        """Record the order's executions as fills of the session; the number newly recorded."""
        recorded = 0
        for t in await self._exchange.order_trades(order.symbol, order.id):
            fill = Fill(session_id, order.id, order.symbol, t.side, t.price, t.amount, t.fee,
                        t.timestamp, trade_id=t.id)  # fmt: skip
            recorded += await self._fills.record(fill)
        return recorded

    async def _note_order(self, session_id: str, order: ExchangeOrder) -> None:
        """The take-profit as an order of its session takes the exchange's status and fill."""
        mine = await self._orders.get(session_id, order.symbol, order.id)
        if mine is not None and (mine.status, mine.filled) != (order.status, order.filled):
            await self._order_writer.save(replace(mine, status=order.status, filled=order.filled))

    async def _unknown(
        self, run: _Run, pairs: Sequence[str], candidates: Sequence[ExchangeOrder]
    ) -> None:
        """Report open sells of the pairs that are no take-profit and no recorded order of
        the session (another program's, or a person's): never touched."""
        sells = [o for o in candidates if o.side is Side.SELL and o.symbol in pairs]
        if not sells:
            return
        s = run.session.id
        read = await self._positions.tp_orders(s, [o.id for o in sells])
        recorded = {oid for oid, _ in read.items}
        for o in sells:
            if o.id in recorded or await self._orders.get(s, o.symbol, o.id) is not None:
                continue
            run.rows.append(
                ReconcileRow(s, o.symbol, o.id, o.client_order_id, None, None, o.status,
                             o.filled, ReconcileAction.REPORTED_UNKNOWN, o.amount)
            )  # fmt: skip
            log.warning("reconcile.unknown_order", session=s, pair=o.symbol, order=o.id)


def _row(
    run: _Run,
    b: _Believed,
    order: ExchangeOrder | None,
    action: ReconcileAction,
    detail: str = "",
) -> ReconcileRow:
    return ReconcileRow(
        session=run.session.id,
        pair=b.position.symbol,
        order_id=b.order_id,
        client_order_id=b.client_order_id,
        position_id=b.position.position_id,
        believed=TpStatus.OPEN,
        exchange=None if order is None else order.status,
        filled=None if order is None else order.filled,
        action=action,
        amount=b.amount,
        detail=detail,
    )
