"""The tier backtest's replay: a session's recorded buys and prices, run again against a tier
table with the same pricing code as settlement (``price_take_profit``: break-even, tier, the
post-only switch to the ask, tick and lot rounding, dust).

What settlement really does, and what the replay does in its place:

* **Settlement runs** happen at the times a price was recorded for the pair (every run, quick
  ones included, records one ticker per pair it settles; ``ReplayData.runs``). At a run, in
  this order:
  1. the buy fills up to the run's time are known (the fill feed records a fill before the
     run it triggers), and the position's age is counted from its first buy fill;
  2. **reprice**: a resting take-profit whose tier is older than the position's current tier is
     moved, in place, to the current tier's price (``services/reprice.py``: amend; when the new
     price would be dust the old order is kept);
  3. **place**: the position's uncovered quantity (filled - every take-profit so far) gets one
     post-only sell at ``price_take_profit`` of the run's ticker; dust is never placed.
* **Fills**: the paper venue fills a resting sell at its own price when the best bid reaches it
  (``adapters/paper/matching.py``); the replay does the same on a **fill path** of bid prices:
  a sell at P fills at each path time *after* it was placed or amended with bid ≥ P, at P,
  paying the maker fee, until nothing of it is left. How much a crossing fills is the
  ``FillModel``'s answer: all that is left (``whole_fills``, the default), or the venue's own
  rule (the paper venue's half fills, ``adapters/paper/matching.fill_quantity``), which needs
  the take-profit's client order id: (session, position, generation), the k-th take-profit of
  a position being generation k, as settlement's fence counts them. A path point at a run's
  time is matched before that run (the trading loop matches, then settlement runs). With no
  separate path, the fill path is the settlement-time tickers themselves.

Known differences from a real session (so a replay is an estimate, measured in docs/BACKTEST.md):

* the venue matches on a finer path (every 10 s of the paper loop) than settlement records
  (every run, ~3 min): a crossing that comes and goes between two runs fills on the venue and
  not in a replay of settlement-time prices (and a fill seen by the replay is seen late). The
  fill path the paper loop records at the venue's own steps (``ReplayData.path``, Redis
  ``path:{S}``, PostgreSQL ``price_path``) removes that difference;
* a live exchange fills part of an order as its book decides; the replay cannot know, and
  fills what its ``FillModel`` says;
* a placement refused or cancelled and replaced moves a real position's generation on; the
  replay has no refusals, so after one its client ids (and the venue's coin) differ;
* balances, the stop-loss, pair status changes and engine refusals are not replayed: every
  placeable take-profit is assumed placed.

Money is ``Decimal`` throughout; time is passed in, never read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from mmops.domain.ids import client_order_id
from mmops.domain.models import (
    ZERO,
    Market,
    Position,
    Session,
    Ticker,
    check_amount,
    check_order_id,
    check_session_id,
    check_symbol,
    check_time,
)
from mmops.domain.pricing import Dust, TakeProfitQuote, age_in_minutes, price_take_profit
from mmops.domain.tiers import TierPolicy, TierTable

_HOUR_MICROS = Decimal(3_600_000_000)

# How much of a resting sell one crossing fills: (its client order id, what is left of it, its
# market, the path time) -> the quantity, more than 0 and at most what is left.
FillModel = Callable[[str, Decimal, Market, datetime], Decimal]


def whole_fills(client_id: str, remaining: Decimal, market: Market, at: datetime) -> Decimal:
    """Every crossing fills all that is left (the replay's default: no book is modelled)."""
    return remaining


def hours(delta: timedelta) -> Decimal:
    """``delta`` in hours, exactly (from its whole microseconds)."""
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return Decimal(micros) / _HOUR_MICROS


@dataclass(frozen=True, slots=True)
class PricePoint:
    """Best bid and ask of one pair at one time (a settlement run's ticker, or a path step)."""

    symbol: str
    at: datetime
    bid: Decimal
    ask: Decimal

    def __post_init__(self) -> None:
        check_symbol(self.symbol)
        check_time("at", self.at)
        check_amount("bid", self.bid, positive=True)
        check_amount("ask", self.ask, positive=True)


@dataclass(frozen=True, slots=True)
class _Execution:
    position_id: str
    symbol: str
    at: datetime
    price: Decimal
    quantity: Decimal
    fee: Decimal  # in the quote currency

    def __post_init__(self) -> None:
        check_order_id(self.position_id)
        check_symbol(self.symbol)
        check_time("at", self.at)
        check_amount("price", self.price, positive=True)
        check_amount("quantity", self.quantity, positive=True)
        check_amount("fee", self.fee)


@dataclass(frozen=True, slots=True)
class BuyFill(_Execution):
    """One execution of a buy order: it grows the position whose id is the order's id."""


@dataclass(frozen=True, slots=True)
class RealSell(_Execution):
    """A take-profit fill that really happened (a sell fill of a take-profit order)."""


@dataclass(frozen=True, slots=True)
class SessionHistory:
    """One session as the backtest reads it from the warehouse: its buys, the tickers
    settlement recorded, its real take-profit fills, the (pair, tier minutes, markup) its
    take-profits were priced at, the rows left out as bad (with the reason), and the fill path
    recorded at the venue's match steps (empty when none was: a live session)."""

    session: Session
    buys: tuple[BuyFill, ...]
    prices: tuple[PricePoint, ...]
    sells: tuple[RealSell, ...]
    tiers_used: tuple[tuple[str, int, Decimal], ...] = ()
    bad: tuple[str, ...] = ()
    path: tuple[PricePoint, ...] = ()


@dataclass(frozen=True, slots=True)
class ReplayData:
    """Everything a replay reads: one session's buys, its settlement-time tickers, the markets.

    ``path``: a denser fill path than ``runs`` (None: fills are matched on ``runs``).
    ``end``: when the replay stops (None: the last price time); inventory is counted to it.
    Raises ValueError if a buy or a price names a pair with no market.
    """

    session_id: str
    markets: Mapping[str, Market]
    buys: tuple[BuyFill, ...]
    runs: tuple[PricePoint, ...]
    path: tuple[PricePoint, ...] | None = None
    end: datetime | None = None

    def __post_init__(self) -> None:
        check_session_id(self.session_id)
        named = {b.symbol for b in self.buys} | {p.symbol for p in self.runs}
        named |= {p.symbol for p in self.path or ()}
        if missing := sorted(named - set(self.markets)):
            raise ValueError(f"no market for {', '.join(missing)}")
        if self.end is not None:
            check_time("end", self.end)

    @property
    def until(self) -> datetime | None:
        """The end of the replay: ``end``, else the last time anything was recorded."""
        if self.end is not None:
            return self.end
        times = [p.at for p in (*self.runs, *(self.path or ()))] + [b.at for b in self.buys]
        return max(times, default=None)


@dataclass(frozen=True, slots=True)
class TpFill:
    """A take-profit the replay filled: its price, quantity, fee and the tier it was priced at."""

    position_id: str
    symbol: str
    at: datetime
    price: Decimal
    quantity: Decimal
    fee: Decimal
    tier_minutes: int
    markup: Decimal  # the planned markup of the tier it was priced at
    basis: Decimal  # the position's cost per unit (fees in) when it filled

    @property
    def pnl(self) -> Decimal:
        """Proceeds after the sell fee minus what the quantity cost."""
        return self.price * self.quantity - self.fee - self.basis * self.quantity


@dataclass(frozen=True, slots=True)
class PositionOutcome:
    """One position at the end of a replay.

    ``open_quantity``: held by resting take-profits or still uncovered and placeable;
    ``dust_quantity``: uncovered but below the market's minimums (never placed).
    ``crossed``: some quote of it was priced at the ask (its target was at or below the bid);
    ``dust``: some placement or repricing of it was dust. Both mark where a higher markup can
    sell sooner (a target between bid and ask is below the ask; a higher price clears min cost).
    """

    position_id: str
    symbol: str
    opened_at: datetime
    bought: Decimal
    cost: Decimal  # Σ price·qty of the buys plus their fees
    fills: tuple[TpFill, ...]
    open_quantity: Decimal
    dust_quantity: Decimal
    inventory_hours: Decimal  # Σ (basis * quantity held * hours held), quote-currency hours
    crossed: bool = False
    dust: bool = False

    @property
    def sold(self) -> Decimal:
        return sum((f.quantity for f in self.fills), ZERO)

    @property
    def realized_pnl(self) -> Decimal:
        return sum((f.pnl for f in self.fills), ZERO)

    @property
    def cost_of_sold(self) -> Decimal:
        return sum((f.basis * f.quantity for f in self.fills), ZERO)

    @property
    def closed(self) -> bool:
        """Everything placeable was sold: nothing rests or waits, and something sold."""
        return self.open_quantity == 0 and self.sold > 0

    @property
    def last_fill_at(self) -> datetime | None:
        return max((f.at for f in self.fills), default=None)


@dataclass(frozen=True, slots=True)
class Replay:
    """The outcome of one tier table: one record per position, in the order they opened."""

    positions: tuple[PositionOutcome, ...]
    end: datetime | None


# -- the replay ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Tp:
    client_id: str
    price: Decimal
    amount: Decimal
    tier: int
    markup: Decimal
    since: datetime  # placed or last amended: it can fill only on later path points
    sold: Decimal = ZERO
    filled_at: datetime | None = None  # when the last of it sold


@dataclass(slots=True)
class _Pos:
    session_id: str
    position_id: str
    symbol: str
    opened_at: datetime
    buys: list[BuyFill] = field(default_factory=list)
    tps: list[_Tp] = field(default_factory=list)
    fills: list[TpFill] = field(default_factory=list)
    crossed: bool = False
    dust: bool = False

    @property
    def filled(self) -> Decimal:
        return sum((b.quantity for b in self.buys), ZERO)

    @property
    def cost(self) -> Decimal:
        return sum((b.price * b.quantity + b.fee for b in self.buys), ZERO)

    def as_position(self, taken: Decimal) -> Position:
        """The domain position with ``taken`` of it held or sold by take-profits."""
        return Position(
            session_id=self.session_id,
            position_id=self.position_id,
            symbol=self.symbol,
            opened_at=self.opened_at,
            filled=self.filled,
            cost=sum((b.price * b.quantity for b in self.buys), ZERO),
            fees=sum((b.fee for b in self.buys), ZERO),
            covered=taken,
        )


def replay(
    data: ReplayData, tiers: TierPolicy | TierTable, fills: FillModel = whole_fills
) -> Replay:
    """Replay ``data`` against ``tiers`` (a table for every pair, or a policy with per-pair
    tables), each crossing filling what ``fills`` says, and return each position's outcome.
    Pure: the same input gives the same output. Raises ValueError if ``fills`` answers a
    quantity that is not more than 0 and at most what is left."""
    policy = tiers if isinstance(tiers, TierPolicy) else TierPolicy(default=tiers)
    end = data.until
    outcomes: list[PositionOutcome] = []
    for symbol in sorted({b.symbol for b in data.buys}):
        market = data.markets[symbol]
        runs = sorted((p for p in data.runs if p.symbol == symbol), key=lambda p: p.at)
        path_all = data.runs if data.path is None else data.path
        path = sorted((p for p in path_all if p.symbol == symbol), key=lambda p: p.at)
        buys = sorted((b for b in data.buys if b.symbol == symbol), key=lambda b: b.at)
        positions = _replay_pair(
            data.session_id, market, policy.for_pair(symbol), runs, path, buys, fills
        )
        outcomes += [_outcome(p, market, end) for p in positions]
    outcomes.sort(key=lambda o: (o.opened_at, o.symbol, o.position_id))
    return Replay(tuple(outcomes), end)


def _replay_pair(
    session_id: str,
    market: Market,
    table: TierTable,
    runs: Sequence[PricePoint],
    path: Sequence[PricePoint],
    buys: Sequence[BuyFill],
    fills: FillModel,
) -> list[_Pos]:
    positions: dict[str, _Pos] = {}
    known = 0  # buys[:known] are known to settlement
    p = 0
    for run in runs:
        while p < len(path) and path[p].at <= run.at:  # the venue matches before the run
            _match(positions.values(), path[p], market, fills)
            p += 1
        while known < len(buys) and buys[known].at <= run.at:
            b = buys[known]
            pos = positions.setdefault(
                b.position_id, _Pos(session_id, b.position_id, b.symbol, b.at)
            )
            pos.buys.append(b)
            known += 1
        ticker = Ticker(run.symbol, run.bid, run.ask, run.at)
        for pos in positions.values():
            _reprice(pos, market, ticker, table)
            _place(pos, market, ticker, table)
    for point in path[p:]:
        _match(positions.values(), point, market, fills)
    for b in buys[known:]:  # bought after the last run: never settled
        pos = positions.setdefault(b.position_id, _Pos(session_id, b.position_id, b.symbol, b.at))
        pos.buys.append(b)
    return list(positions.values())


def _match(positions: Iterable[_Pos], point: PricePoint, market: Market, fills: FillModel) -> None:
    for pos in positions:
        for tp in pos.tps:
            if tp.filled_at is None and tp.since < point.at and point.bid >= tp.price:
                left = tp.amount - tp.sold
                qty = fills(tp.client_id, left, market, point.at)
                if not ZERO < qty <= left:
                    raise ValueError(f"a fill model answered {qty} of {left} left")
                tp.sold += qty
                if tp.sold == tp.amount:
                    tp.filled_at = point.at
                pos.fills.append(
                    TpFill(
                        position_id=pos.position_id,
                        symbol=pos.symbol,
                        at=point.at,
                        price=tp.price,
                        quantity=qty,
                        fee=tp.price * qty * market.maker_fee,
                        tier_minutes=tp.tier,
                        markup=tp.markup,
                        basis=pos.cost / pos.filled,
                    )
                )


def _reprice(pos: _Pos, market: Market, ticker: Ticker, table: TierTable) -> None:
    """Amend each resting take-profit priced at an older tier than the position's current one."""
    tier_now, _ = table.markup_at(age_in_minutes(pos.opened_at, ticker.timestamp))
    taken = sum((tp.amount for tp in pos.tps), ZERO)
    for tp in pos.tps:
        if tp.filled_at is not None or tp.tier >= tier_now:
            continue
        age = age_in_minutes(pos.opened_at, ticker.timestamp)
        quote = price_take_profit(pos.as_position(taken - tp.amount), age, market, ticker, table)
        if isinstance(quote, Dust):
            pos.dust = True
            continue  # the resting order is kept
        _note(pos, quote)
        tp.price, tp.tier, tp.markup, tp.since = (
            quote.price,
            quote.tier_minutes,
            quote.markup,
            ticker.timestamp,
        )


def _place(pos: _Pos, market: Market, ticker: Ticker, table: TierTable) -> None:
    """Cover the position's uncovered quantity with one take-profit, unless it is dust."""
    taken = sum((tp.amount for tp in pos.tps), ZERO)
    if pos.filled - taken <= 0:
        return
    age = age_in_minutes(pos.opened_at, ticker.timestamp)
    quote = price_take_profit(pos.as_position(taken), age, market, ticker, table)
    if isinstance(quote, Dust):
        pos.dust = pos.dust or quote.amount > 0
        return
    _note(pos, quote)
    # The k-th take-profit of a position is fenced with generation k (no refusals replayed).
    cid = client_order_id(pos.session_id, pos.position_id, len(pos.tps))
    pos.tps.append(
        _Tp(cid, quote.price, quote.amount, quote.tier_minutes, quote.markup, ticker.timestamp)
    )


def _note(pos: _Pos, quote: TakeProfitQuote) -> None:
    pos.crossed = pos.crossed or quote.crossed


def _outcome(pos: _Pos, market: Market, end: datetime | None) -> PositionOutcome:
    taken = sum((tp.amount for tp in pos.tps), ZERO)
    resting = sum((tp.amount - tp.sold for tp in pos.tps), ZERO)
    uncovered = pos.filled - taken
    placeable = uncovered >= market.lot and uncovered >= market.min_amount
    return PositionOutcome(
        position_id=pos.position_id,
        symbol=pos.symbol,
        opened_at=pos.opened_at,
        bought=pos.filled,
        cost=pos.cost,
        fills=tuple(pos.fills),
        open_quantity=resting + (uncovered if placeable else ZERO),
        dust_quantity=ZERO if placeable else uncovered,
        inventory_hours=_inventory_hours(pos, end),
        crossed=pos.crossed,
        dust=pos.dust,
    )


def _inventory_hours(pos: _Pos, end: datetime | None) -> Decimal:
    """Σ basis * quantity * hours held: each buy from its fill, each sell until its fill."""
    if end is None or pos.filled == 0:
        return ZERO
    basis = pos.cost / pos.filled
    held = sum((b.quantity * hours(max(end - b.at, timedelta(0))) for b in pos.buys), ZERO)
    sold = sum((f.quantity * hours(max(end - f.at, timedelta(0))) for f in pos.fills), ZERO)
    return basis * max(ZERO, held - sold)
