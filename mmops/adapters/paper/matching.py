"""Matching resting orders against the price path: a pure function the venue runs in a
transaction. A resting buy fills when the best ask falls to its price, a resting sell when
the best bid rises to it; the order is the maker, so it fills at its own price and pays the
maker fee. Some crossings fill only part of what is left (a reproducible coin decides), so
partial fills happen as they do on a real venue. The coin reads only the order's client id and
what is left of it: no time (the same seed trades the same whenever it runs), nothing the venue
assigns (its ids depend on how concurrent callers interleave), and each crossing leaves a new
quantity, so a new toss. The tier backtest derives the same client ids and replays the venue's
half fills exactly (``fill_quantity``, passed to ``mmops.domain.backtest.replay``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from mmops.adapters.paper.prices import Quote
from mmops.adapters.paper.state import Holding, PaperOrder
from mmops.domain.exchange import Trade
from mmops.domain.models import Market, OrderStatus, Side
from mmops.domain.rounding import round_amount_down

MAX_SAMPLES = 4000  # a long gap is matched over its last MAX_SAMPLES steps only
PARTIAL_CHANCE = 0.3


@dataclass(frozen=True, slots=True)
class MatchOutcome:
    orders: list[PaperOrder]  # orders that changed
    holdings: dict[str, Holding]  # balances that changed
    trades: list[Trade]  # new executions (ids assigned by the venue)


def stable_fraction(*parts: object) -> float:
    """A number in [0, 1) from its inputs alone: the venue's reproducible coin."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def match_orders(
    orders: Sequence[PaperOrder],
    holdings: Mapping[str, Holding],
    markets: Mapping[str, Market],
    quote: Callable[[str, float], Quote],
    start: float,
    end: float,
    step: float,
) -> MatchOutcome:
    """Walk the path from ``start`` (exclusive) to ``end`` in ``step`` seconds."""
    times = sample_times(start, end, step)
    balances = dict(holdings)
    changed: dict[str, PaperOrder] = {}
    trades: list[Trade] = []
    quotes: dict[tuple[str, float], Quote] = {}
    for paper in orders:
        market = markets[paper.order.symbol]
        for t in times:
            if paper.order.status is not OrderStatus.OPEN:
                break
            q = quotes.get((market.symbol, t))
            if q is None:
                q = quotes[(market.symbol, t)] = quote(market.symbol, t)
            if not _crossed(paper, q):
                continue
            at = datetime.fromtimestamp(t, UTC)
            order = paper.order
            qty = fill_quantity(order.client_order_id or order.id, order.remaining, market, at)
            paper, trade = _execute(paper, market, qty, at, balances)
            changed[paper.order.id] = paper
            trades.append(trade)
    trades.sort(key=lambda tr: (tr.timestamp, tr.order_id))
    touched = {a: h for a, h in balances.items() if holdings.get(a) != h}
    return MatchOutcome(list(changed.values()), touched, trades)


def sample_times(start: float, end: float, step: float) -> list[float]:
    """The times a match from ``start`` (exclusive) to ``end`` looks at the path: every
    ``step`` seconds (the last ``MAX_SAMPLES`` of a long gap), and ``end`` itself."""
    if step <= 0:
        raise ValueError("step must be positive")
    count = int((end - start) // step)
    first = max(1, count - MAX_SAMPLES + 1)
    times = [start + i * step for i in range(first, count + 1)]
    if not times or times[-1] < end:
        times.append(end)
    return times


def _crossed(paper: PaperOrder, q: Quote) -> bool:
    o = paper.order
    return q.ask <= o.price if o.side is Side.BUY else q.bid >= o.price


def fill_quantity(client_id: str, remaining: Decimal, market: Market, at: datetime) -> Decimal:
    """How much of ``remaining`` one crossing fills: half (down to the lot) when the coin for
    (client id, remaining) says so, else all. ``at`` is not read: the signature is the
    backtest's ``FillModel``."""
    # Normalized: 0.0100 and 0.01 are one quantity, however each side spelled it.
    if stable_fraction(client_id, remaining.normalize()) < PARTIAL_CHANCE:
        half = round_amount_down(remaining / 2, market.lot)
        if half > 0:
            return half
    return remaining


def _execute(
    paper: PaperOrder, market: Market, qty: Decimal, at: datetime, balances: dict[str, Holding]
) -> tuple[PaperOrder, Trade]:
    o = paper.order
    cost = qty * o.price
    fee = cost * market.maker_fee
    base = balances.get(market.base, Holding(Decimal(0), Decimal(0)))
    quote = balances.get(market.quote, Holding(Decimal(0), Decimal(0)))
    done = qty >= o.remaining
    if o.side is Side.BUY:
        release = paper.hold if done else min(paper.hold, cost + fee)
        balances[market.base] = Holding(base.total + qty, base.used)
        balances[market.quote] = Holding(quote.total - cost - fee, quote.used - release)
    else:
        release = qty
        balances[market.base] = Holding(base.total - qty, base.used - qty)
        balances[market.quote] = Holding(quote.total + cost - fee, quote.used)
    filled = paper.with_fill(qty, release)
    trade = Trade(
        id="",
        order_id=o.id,
        symbol=o.symbol,
        side=o.side,
        price=o.price,
        amount=qty,
        fee=fee,
        timestamp=at,
        client_order_id=o.client_order_id,
    )
    return filled, trade
