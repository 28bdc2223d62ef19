"""Portfolio stop-loss: equity over all pairs, drawdown from the session's peak, and actions.

equity = capital + realized + unrealized at the best bid (FIFO per pair over the recorded
fills). The peak and the highest level acted on are kept in ``settlement:status:{S}``, so each
level's action (warn: alert; halt: the session's status tells the trading loop to stop buying;
flatten: cancel take-profits and exit positions, never in dry-run) happens once, not every run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from mmops import logs
from mmops.domain.exchange import DEFAULT_DEADLINE, MAX_BATCH, OrderRequest
from mmops.domain.ids import client_order_id
from mmops.domain.models import (
    Order,
    OrderKind,
    OrderStatus,
    Position,
    Session,
    SessionStatus,
    Side,
)
from mmops.domain.pnl import (
    PairPnL,
    StopLossLevel,
    StopLossThresholds,
    drawdown,
    equity,
    fifo_pnl,
    refusal,
    stop_loss_level,
)
from mmops.domain.records import StopLossFigures, TpStatus
from mmops.errors import RECOVERABLE
from mmops.ports import (
    Clock,
    Exchange,
    Fills,
    Notifier,
    OrderWriter,
    Positions,
    SettlementRecords,
    cancel_or_fetch,
)
from mmops.services.sessions import SessionRegistry
from mmops.services.tp_results import MarketData

log = logs.get_logger("mmops.stoploss")


@dataclass(frozen=True, slots=True)
class StopLossReport:
    equity: Decimal
    peak: Decimal
    drawdown: Decimal
    level: StopLossLevel
    action: str | None  # the level acted on this run, if any
    bad_fills: int = 0
    bad: tuple[tuple[str, str], ...] = ()  # (key, reason) of each fill left out, quarantined

    def figures(self) -> StopLossFigures:
        """What the settlement status keeps between runs."""
        return StopLossFigures(
            equity=self.equity, peak_equity=self.peak, drawdown=self.drawdown, level=self.level
        )

    def fields(self) -> dict[str, str]:
        """The figures as the run's report shows them (named as in the settlement status)."""
        return {
            "equity": str(self.equity),
            "peak_equity": str(self.peak),
            "drawdown": str(self.drawdown),
            "stoploss_level": self.level.value,
        }


class StopLossService:
    def __init__(
        self,
        fills: Fills,
        positions: Positions,
        records: SettlementRecords,
        registry: SessionRegistry,
        exchange: Exchange,
        notifier: Notifier,
        thresholds: StopLossThresholds,
        *,
        dry_run: bool = False,
        clock: Clock | None = None,
        deadline: timedelta = DEFAULT_DEADLINE,
        orders: OrderWriter | None = None,
    ) -> None:
        # Exits carry a deadline to the exchange like take-profits: a worker paused mid-send
        # cannot land an exit late (``clock`` None: no deadline, as a venue without one).
        self._clock = clock
        self._deadline = deadline
        self._fills = fills
        self._positions = positions
        self._records = records
        self._registry = registry
        self._exchange = exchange
        self._notifier = notifier
        self._thresholds = thresholds
        self._orders = orders  # exits are recorded as the session's orders (kind ``exit``)
        self.dry_run = dry_run

    async def check(self, session: Session, data: MarketData) -> StopLossReport | None:
        """Measure the drawdown and act on a level not acted on before.

        Returns None for a session without capital (no drawdown can be measured).
        """
        if session.capital <= 0:
            return None
        pnls, bad = await self._pnls(session)
        marks = {pair: t.bid for pair, t in data.tickers.items()}
        now_equity = equity(session.capital, pnls, marks)
        status = await self._records.settlement_status(session.id)
        previous = status.stoploss if status is not None else None  # None: never measured
        peak = max(previous.peak_equity if previous is not None else session.capital, now_equity)
        fraction = drawdown(peak, now_equity)
        level = stop_loss_level(fraction, self._thresholds)
        acted = previous.level if previous is not None else StopLossLevel.NONE
        action = None
        if level.severity > acted.severity:
            action = level.value
            await self._act(session, level, fraction, now_equity, peak)
        elif acted is StopLossLevel.FLATTEN and not self.dry_run:
            await self._flatten(session)  # finish what an earlier run could not (no new alert)
        kept = level if level.severity > acted.severity else acted
        return StopLossReport(
            equity=now_equity,
            peak=peak,
            drawdown=fraction,
            level=kept,
            action=action,
            bad_fills=len(bad),
            bad=tuple(bad),
        )

    async def _pnls(self, session: Session) -> tuple[list[PairPnL], list[tuple[str, str]]]:
        """Each pair's FIFO P&L over the fills that can be counted. A fill that did not parse,
        or one the P&L refuses (another pair's, an amount beyond the bound), is left out and
        returned as (key, reason): one bad record never switches the stop-loss off."""
        pnls: list[PairPnL] = []
        bad: list[tuple[str, str]] = []
        for pair in session.pairs:
            fills = []
            async for chunk in self._fills.scan(session.id, pair):
                bad.extend((b.key, b.reason) for b in chunk.bad)
                for fill in chunk.items:
                    reason = refusal(session.id, pair, fill)
                    if reason is None:
                        fills.append(fill)
                    else:
                        bad.append((f"{pair}#{fill.key}", reason))
            pnls.append(fifo_pnl(session.id, pair, fills))
        for key, reason in bad:
            log.error("stoploss.bad_record", session=session.id, key=key, reason=reason)
        return pnls, bad

    async def _act(
        self, session: Session, level: StopLossLevel, fraction: Decimal, eq: Decimal, peak: Decimal
    ) -> None:
        log.warning(
            "stoploss.triggered", session=session.id, level=level.value,
            drawdown=str(fraction), equity=str(eq), peak=str(peak), dry_run=self.dry_run,
        )  # fmt: skip
        what = {
            StopLossLevel.WARN: "warning only",
            StopLossLevel.HALT: "session halted: the trading loop stops buying",
            StopLossLevel.FLATTEN: "take-profits cancelled and positions exited",
        }[level]
        if self.dry_run:
            what = f"dry-run, nothing done ({what} when live)"
        elif level.severity >= StopLossLevel.HALT.severity:
            await self._registry.set_status(session.id, SessionStatus.HALTED)
            if level is StopLossLevel.FLATTEN:
                await self._flatten(session)
        await self._notifier.notify(
            f"mmops stop-loss {level.value}: session {session.id}",
            f"drawdown {fraction:.2%} from peak {peak} (equity {eq}); {what}",
            "failure" if level is StopLossLevel.FLATTEN else "warning",
        )

    async def _flatten(self, session: Session) -> None:
        """Cancel every live take-profit, then sell what each position still holds at the bid.

        Idempotent: positions already exited and take-profits already cancelled are skipped,
        so a run that was cut short (rate limit, outage) is completed by the next one.
        """
        for pair in session.pairs:
            result = await self._positions.all(session.id, pair)
            bid = (await self._exchange.tickers([pair]))[pair].bid
            exits: list[tuple[Position, Decimal]] = []
            for position in result.items:
                try:
                    sold = await self._cancel_take_profits(position)
                except RECOVERABLE as e:
                    log.error("stoploss.cancel_failed", position=position.position_id, error=str(e))
                    continue
                # What a take-profit in flight (a pending marker) may still sell stays out of
                # the exit until its fate is known: a later flatten exits it if it never landed.
                left = position.filled - position.closed - sold - position.pending_amount
                if left > 0:
                    exits.append((position, left))
            for start in range(0, len(exits), MAX_BATCH):
                await self._exit(exits[start : start + MAX_BATCH], bid)

    async def _cancel_take_profits(self, position: Position) -> Decimal:
        """Cancel the position's take-profits; return what they had already sold, and what
        one whose cancel is still pending holds (it may yet fill: not to be exited now; a
        later flatten cancels it again)."""
        sold = Decimal(0)
        for order_id, _amount in position.take_profits:
            order = await cancel_or_fetch(self._exchange, position.symbol, order_id)
            sold += order.filled
            if order.status is OrderStatus.OPEN:  # the cancel is pending: not released yet
                sold += order.remaining
                log.warning("stoploss.cancel_pending", position=position.position_id,
                            order=order_id)  # fmt: skip
                continue
            if order.status is not OrderStatus.FILLED:
                await self._positions.release_coverage(
                    position, order_id, TpStatus.CANCELED, order.filled
                )
        return sold

    async def _exit(self, exits: list[tuple[Position, Decimal]], bid: Decimal) -> None:
        """Place one batch of exit sells (takers at the bid) and record what they close."""
        deadline = None if self._clock is None else self._clock.now() + self._deadline
        requests = [
            OrderRequest(
                symbol=p.symbol,
                side=Side.SELL,
                amount=amount,
                price=bid,
                client_order_id=client_order_id(
                    p.session_id, f"{p.position_id}:exit", p.generation
                ),
                post_only=False,
                deadline=deadline,
            )
            for p, amount in exits
        ]
        try:
            results = await self._exchange.place_batch(requests)
        except RECOVERABLE as e:
            log.error("stoploss.exit_failed", positions=len(exits), error=str(e))
            return
        for (position, amount), result in zip(exits, results, strict=True):
            if result.order is None:
                log.error(
                    "stoploss.exit_failed", position=position.position_id, error=str(result.error)
                )
                continue
            await self._positions.record_exit(position, result.order.id, amount)
            if self._orders is not None:  # so its fills are the session's (feed, migration)
                o = result.order
                exit_order = Order(position.session_id, o.id, o.symbol, Side.SELL, o.price,
                                   o.amount, o.created_at, o.status, o.filled, OrderKind.EXIT,
                                   o.client_order_id)  # fmt: skip
                await self._orders.save(exit_order)
