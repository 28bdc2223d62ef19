"""What crosses the ``Exchange`` port: order requests, exchange orders, placement results."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from mmops.domain.models import (
    ZERO,
    Market,
    OrderStatus,
    Side,
    check_amount,
    check_symbol,
    check_time,
)
from mmops.domain.rounding import is_multiple
from mmops.errors import MmopsError

MAX_BATCH = 15  # Kraken's AddOrderBatch limit: orders of one pair per call
# Kraken's window for an order request's ``deadline`` (AddOrder, AddOrderBatch): "min now() + 2
# seconds, max now() + 60 seconds" (https://docs.kraken.com/api-reference/trading/add-order).
DEADLINE_MIN_AHEAD = timedelta(seconds=2)
DEADLINE_MAX_AHEAD = timedelta(seconds=60)
DEFAULT_DEADLINE = timedelta(seconds=15)  # how long mmops gives an order to reach the venue


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """A limit order to place. ``client_order_id`` makes a retry recognisable (a UUID).

    ``deadline`` is the exchange-side fence: a venue refuses the order if the request reaches
    it later (Kraken's ``deadline`` on AddOrder/AddOrderBatch), so a worker paused between
    fencing and sending can never land an order someone else may already have replaced.
    """

    symbol: str
    side: Side
    amount: Decimal
    price: Decimal
    client_order_id: str
    post_only: bool = True
    deadline: datetime | None = None

    def __post_init__(self) -> None:
        check_symbol(self.symbol)
        check_amount("amount", self.amount, positive=True)
        check_amount("price", self.price, positive=True)
        if not self.client_order_id:
            raise ValueError("an order request needs a client order id")
        if self.deadline is not None:
            check_time("deadline", self.deadline)


class MarketRule(StrEnum):
    """A rule of a market that an order must keep, or the venue refuses it."""

    TICK_AND_LOT = "tick_and_lot"  # price on the tick's grid, amount on the lot's
    MINIMUM = "minimum"  # amount ≥ the minimum amount, price * amount ≥ the minimum cost


def check_batch(orders: Sequence[OrderRequest]) -> None:
    """Refuse a batch no venue call can carry: more than MAX_BATCH orders, or several pairs.

    Raises ValueError: such a batch is the caller's mistake, not an exchange's refusal.
    """
    if len(orders) > MAX_BATCH:
        raise ValueError(f"a batch holds at most {MAX_BATCH} orders, got {len(orders)}")
    if len({o.symbol for o in orders}) > 1:
        raise ValueError("a batch holds orders of one pair only")


def broken_rule(order: OrderRequest, market: Market) -> MarketRule | None:
    """The rule of ``market`` that ``order`` breaks (the grid is checked first), or None.

    Each venue words its own refusal; the rules are the same everywhere.
    """
    if not (is_multiple(order.price, market.tick) and is_multiple(order.amount, market.lot)):
        return MarketRule.TICK_AND_LOT
    if order.amount < market.min_amount or order.amount * order.price < market.min_cost:
        return MarketRule.MINIMUM
    return None


@dataclass(frozen=True, slots=True)
class ExchangeOrder:
    """An order as the exchange reports it."""

    id: str
    symbol: str
    side: Side
    price: Decimal
    amount: Decimal
    status: OrderStatus
    created_at: datetime
    filled: Decimal = ZERO
    client_order_id: str | None = None

    def __post_init__(self) -> None:
        check_symbol(self.symbol)
        check_amount("amount", self.amount, positive=True)
        check_amount("price", self.price, positive=True)
        check_amount("filled", self.filled)
        check_time("created_at", self.created_at)

    @property
    def live(self) -> bool:
        """Open or filled: it holds (or held) the quantity it was placed for."""
        return self.status in (OrderStatus.OPEN, OrderStatus.FILLED)

    @property
    def remaining(self) -> Decimal:
        return max(ZERO, self.amount - self.filled)


class DeadlineFault(StrEnum):
    """Why a venue refuses a request for its deadline (each venue words its own refusal)."""

    ELAPSED = "elapsed"  # the request arrived at or after its deadline
    WINDOW = "window"  # the deadline lies outside DEADLINE_MIN_AHEAD … DEADLINE_MAX_AHEAD


def deadline_fault(deadline: datetime | None, now: datetime) -> DeadlineFault | None:
    """What is wrong with a request's deadline when it reaches the venue at ``now``, or None."""
    if deadline is None:
        return None
    if deadline <= now:
        return DeadlineFault.ELAPSED
    if not DEADLINE_MIN_AHEAD <= deadline - now <= DEADLINE_MAX_AHEAD:
        return DeadlineFault.WINDOW
    return None


def preferred(orders: Iterable[ExchangeOrder]) -> ExchangeOrder | None:
    """The order a lookup by client order id returns among ``orders`` (all with that id):
    the open one if any, else the most recently created.

    Kraken keeps a ``cl_ord_id`` unique among open orders only, so one id may name several
    closed orders and at most one open order; the open one is the one that still matters.
    """
    candidates = list(orders)
    live = [o for o in candidates if o.status is OrderStatus.OPEN]
    return max(live or candidates, key=lambda o: o.created_at, default=None)


@dataclass(frozen=True, slots=True)
class PlacementResult:
    """The outcome of one order of a batch: an order, or the error that stopped it.

    An ``ExchangeRejected`` error means the exchange refused it (nothing was placed); a
    ``TemporaryError`` such as ``ExchangeTimeout`` means the outcome is unknown and the client
    order id must be looked up before anything is retried.
    """

    request: OrderRequest
    order: ExchangeOrder | None = None
    error: MmopsError | None = None

    def __post_init__(self) -> None:
        if (self.order is None) == (self.error is None):
            raise ValueError("a placement result has exactly one of order and error")

    @property
    def placed(self) -> bool:
        return self.order is not None


@dataclass(frozen=True, slots=True)
class Trade:
    """One execution of the account's order, as the venue reports it."""

    id: str
    order_id: str
    symbol: str
    side: Side
    price: Decimal
    amount: Decimal
    fee: Decimal  # quote currency
    timestamp: datetime
    client_order_id: str | None = None
