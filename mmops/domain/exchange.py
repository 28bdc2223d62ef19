"""What crosses the ``Exchange`` port: order requests, exchange orders, placement results."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from mmops.domain.models import (
    ZERO,
    OrderStatus,
    Side,
    check_amount,
    check_symbol,
    check_time,
)
from mmops.errors import MmopsError

MAX_BATCH = 15  # Kraken's AddOrderBatch limit: orders of one pair per call


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """A limit order to place. ``client_order_id`` makes a retry recognisable (a UUID)."""

    symbol: str
    side: Side
    amount: Decimal
    price: Decimal
    client_order_id: str
    post_only: bool = True

    def __post_init__(self) -> None:
        check_symbol(self.symbol)
        check_amount("amount", self.amount, positive=True)
        check_amount("price", self.price, positive=True)
        if not self.client_order_id:
            raise ValueError("an order request needs a client order id")


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
