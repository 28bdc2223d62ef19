"""The ports services depend on: short ``typing.Protocol``s, each with a real implementation
in ``mmops.adapters`` (and, for the exchange, a paper one beside the live one)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from mmops.domain.exchange import ExchangeOrder, OrderRequest, PlacementResult
from mmops.domain.models import Balance, Market, Session, SessionStatus, Ticker


class Clock(Protocol):
    """Where services read the time; the simulator passes a simulated one."""

    def now(self) -> datetime: ...


class LiveSessions(Protocol):
    """The live state of sessions (Redis)."""

    async def save(self, s: Session) -> None: ...
    async def get(self, session_id: str) -> Session | None: ...
    async def set_status(self, session_id: str, status: SessionStatus) -> None: ...
    async def end(self, session_id: str, ended_at: datetime) -> None: ...


class SessionRecords(Protocol):
    """The registry of sessions (PostgreSQL), which settlement and migration discover from."""

    async def upsert(self, s: Session) -> None: ...
    async def get(self, session_id: str) -> Session | None: ...
    async def set_status(
        self, session_id: str, status: SessionStatus, ended_at: datetime | None = None
    ) -> None: ...
    async def recent(self, hours_back: int, limit: int, now: datetime) -> list[Session]: ...


class Exchange(Protocol):
    """A venue: markets, tickers, balances, batch placement, cancel and look-ups.

    Implementations map their library's errors into ``mmops.errors`` (temporary, rejected,
    operational) once, at their boundary. All amounts are ``Decimal``.
    """

    name: str

    async def markets(self) -> dict[str, Market]:
        """Trading rules of every pair the venue lists (cached by live adapters)."""
        ...

    async def tickers(self, symbols: Sequence[str]) -> dict[str, Ticker]: ...

    async def balances(self) -> dict[str, Balance]:
        """Per asset: free, used (held by open orders) and total. Never cached."""
        ...

    async def place_batch(self, orders: Sequence[OrderRequest]) -> list[PlacementResult]:
        """Place up to MAX_BATCH orders of one pair; one result per order, in order.

        Raises ValueError for a batch of mixed pairs or over MAX_BATCH; every per-order
        failure (including a timeout) is in its result, never raised.
        """
        ...

    async def cancel(self, symbol: str, order_id: str) -> ExchangeOrder:
        """Cancel an open order; raises OrderNotFound if the venue has no such order."""
        ...

    async def fetch_order(self, symbol: str, order_id: str) -> ExchangeOrder:
        """An order in any state; raises OrderNotFound."""
        ...

    async def open_orders(self, symbol: str | None = None) -> list[ExchangeOrder]: ...

    async def find_by_client_id(self, symbol: str, client_order_id: str) -> ExchangeOrder | None:
        """The order placed with this client order id, in any state, or None."""
        ...

    async def close(self) -> None: ...
