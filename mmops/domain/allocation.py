"""Balance allocation: which take-profits the account can actually fund.

A take-profit sells the pair's base asset, and several pairs share one base (BTC/USD and
BTC/EUR both sell BTC), so demand is summed per base asset across all pairs. Available is the
free balance (not held by open orders) minus a reserve. When short, the oldest positions are
funded first; a partial amount is granted only if it still meets the market's minimums, and
what cannot be funded is reported per position so the caller records it instead of retrying.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from types import MappingProxyType

from mmops.domain.models import ZERO, Balance, Market, check_amount
from mmops.domain.pricing import TakeProfitQuote, dust_reason
from mmops.domain.rounding import round_amount_down

INSUFFICIENT_BALANCE = "insufficient_balance"


@dataclass(frozen=True, slots=True)
class Grant:
    """A take-profit that may be placed for ``amount`` (≤ the quote's amount)."""

    quote: TakeProfitQuote
    amount: Decimal

    @property
    def partial(self) -> bool:
        return self.amount < self.quote.amount


@dataclass(frozen=True, slots=True)
class Shortfall:
    """The part of a take-profit the balance cannot fund (all of it when ``granted`` is 0)."""

    quote: TakeProfitQuote
    granted: Decimal
    missing: Decimal
    available: Decimal  # what was left of the base asset when this position's turn came
    reason: str = INSUFFICIENT_BALANCE


@dataclass(frozen=True, slots=True)
class Allocation:
    """Grants and shortfalls in funding order; a partial grant also appears as a shortfall."""

    granted: tuple[Grant, ...]
    insufficient: tuple[Shortfall, ...]
    available: Mapping[str, Decimal]  # per base asset, before allocation
    remaining: Mapping[str, Decimal]  # per base asset, after allocation


def allocate(
    quotes: Iterable[TakeProfitQuote],
    balances: Mapping[str, Balance],
    markets: Mapping[str, Market],
    reserve: Mapping[str, Decimal] | None = None,
) -> Allocation:
    """Fund ``quotes`` from ``balances`` (keyed by asset), oldest position first.

    Order: ``opened_at``, then position id (then session and pair, for a total order).
    A missing balance counts as zero. Raises ValueError if a quote's pair has no market, if
    a reserve is negative, or if the same position appears twice (its demand would count twice).
    """
    reserve = reserve or {}
    ordered = sorted(quotes, key=lambda q: (q.opened_at, q.position_id, q.session_id, q.symbol))
    _check_unique(ordered)
    available: dict[str, Decimal] = {}
    left: dict[str, Decimal] = {}
    granted: list[Grant] = []
    insufficient: list[Shortfall] = []
    for quote in ordered:
        market = _market_of(quote, markets)
        asset = market.base
        if asset not in available:
            available[asset] = _available(asset, balances, reserve)
            left[asset] = available[asset]
        amount = _grantable(quote, left[asset], market)
        if amount:
            granted.append(Grant(quote, amount))
        if amount < quote.amount:
            insufficient.append(Shortfall(quote, amount, quote.amount - amount, left[asset]))
        left[asset] -= amount
    return Allocation(
        tuple(granted), tuple(insufficient), MappingProxyType(available), MappingProxyType(left)
    )


def funding_groups(pairs: Iterable[str], markets: Mapping[str, Market]) -> list[tuple[str, ...]]:
    """The pairs in groups that spend no balance in common, so each group can be allocated
    (and placed) on its own with the same outcome as all of them at once: the pairs of one
    base asset (by their markets) together, each base apart, in the order first seen. A pair
    with no market is a group of its own (nothing of it is allocated)."""
    groups: dict[tuple[str, str], list[str]] = {}
    for pair in dict.fromkeys(pairs):
        market = markets.get(pair)
        key = ("base", market.base) if market is not None else ("alone", pair)
        groups.setdefault(key, []).append(pair)
    return [tuple(group) for group in groups.values()]


def _grantable(quote: TakeProfitQuote, left: Decimal, market: Market) -> Decimal:
    """The whole amount if it fits, else the lot-rounded rest if that is still placeable, else 0."""
    if quote.amount <= left:
        return quote.amount
    partial = round_amount_down(left, market.lot)
    return partial if dust_reason(partial, quote.price, market) is None else ZERO


def _available(
    asset: str, balances: Mapping[str, Balance], reserve: Mapping[str, Decimal]
) -> Decimal:
    kept = check_amount(f"reserve of {asset}", reserve.get(asset, ZERO))
    balance = balances.get(asset)
    free = balance.free if balance is not None else ZERO
    return max(ZERO, free - kept)


def _market_of(quote: TakeProfitQuote, markets: Mapping[str, Market]) -> Market:
    market = markets.get(quote.symbol)
    if market is None:
        raise ValueError(f"no market for {quote.symbol} (position {quote.position_id})")
    return market


def _check_unique(quotes: list[TakeProfitQuote]) -> None:
    seen: set[tuple[str, str, str]] = set()
    for quote in quotes:
        key = (quote.session_id, quote.symbol, quote.position_id)
        if key in seen:
            raise ValueError(f"position {quote.position_id} ({quote.symbol}) is quoted twice")
        seen.add(key)


# -- reservations: one account's free balance shared by several workers ---------------------


@dataclass(frozen=True, slots=True)
class ReservationRequest:
    """Ask the account's ledger for ``amount`` of ``asset`` out of a free-balance snapshot.

    ``free`` is what this worker's snapshot (taken at ``snapshot``) says it may spend, after
    its own placements since. The ledger subtracts every reservation the snapshot cannot
    reflect: those still pending (their orders not sent yet), and those another owner placed
    at or after ``snapshot``. ``ttl`` bounds how long a pending reservation outlives a dead
    worker, and how long a placed one is kept for snapshots older than its placement.
    """

    account: str
    asset: str
    reservation_id: str
    amount: Decimal
    free: Decimal
    snapshot: datetime
    now: datetime
    ttl: timedelta
    owner: str


@dataclass(frozen=True, slots=True)
class ReservationAnswer:
    """``granted``: the whole amount is reserved. Else nothing is, and ``available`` is what
    the ledger left of ``free`` (never below zero): ask again for at most that much."""

    granted: bool
    available: Decimal


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One reservation as the ledger keeps it; ``placed`` None while its orders are unsent."""

    asset: str
    amount: Decimal
    expires: datetime
    placed: datetime | None
    owner: str

    def counts_against(self, asset: str, snapshot: datetime, owner: str, now: datetime) -> bool:
        """Whether a snapshot taken at ``snapshot`` by ``owner`` must subtract this entry: it
        is live, of the asset, and either unsent or placed by another owner at or after the
        snapshot (an owner's own placements are already out of its snapshot's figure)."""
        if self.asset != asset or self.expires <= now:
            return False
        if self.placed is None:
            return True
        return self.owner != owner and self.placed >= snapshot


def reservation_available(
    free: Decimal,
    live: Iterable[LedgerEntry],
    request_asset: str,
    snapshot: datetime,
    owner: str,
    now: datetime,
) -> Decimal:
    """What is left of ``free`` for a new reservation (≥ 0): the ledger's arithmetic."""
    held = sum(
        (e.amount for e in live if e.counts_against(request_asset, snapshot, owner, now)), ZERO
    )
    return max(ZERO, free - held)
