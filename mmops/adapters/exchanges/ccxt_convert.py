"""ccxt's dicts (floats and strings) → mmops models with exact Decimals; prefers the raw
strings in ``info`` where present so no float rounding creeps in."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from mmops import logs
from mmops.adapters.exchanges.ccxt_errors import (
    safe_text,
)
from mmops.domain.exchange import ExchangeOrder
from mmops.domain.models import (
    ZERO,
    Market,
    OrderStatus,
    PairStatus,
    Side,
    Ticker,
    check_symbol,
)
from mmops.errors import (
    BadRecordError,
    InvalidIdentifier,
)

log = logs.get_logger("mmops.exchange.ccxt")

ORDER_STATUS = {
    None: OrderStatus.OPEN,
    "open": OrderStatus.OPEN,
    "closed": OrderStatus.FILLED,
    "canceled": OrderStatus.CANCELED,
    "cancelled": OrderStatus.CANCELED,
    "expired": OrderStatus.CANCELED,
    "rejected": OrderStatus.REJECTED,
}


_STATUSES = {s.value: s for s in PairStatus}


def to_decimal(value: Any) -> Decimal | None:
    """A Decimal from an exchange value (string, int or float via its shortest repr)."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        return None
    return d if d.is_finite() else None


def positive(value: Any) -> Decimal | None:
    d = to_decimal(value)
    return d if d is not None and d > 0 else None


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def first(value: Any) -> Any:
    return value[0] if isinstance(value, list) and value else None


def markets_from(raw: Any) -> dict[str, Market]:
    markets = {}
    for symbol, m in (raw or {}).items():
        market = market_from(symbol, m)
        if market is not None:
            markets[symbol] = market
    return markets


def market_from(symbol: str, m: dict[str, Any]) -> Market | None:
    """A ccxt market as a Market; None for what mmops cannot trade (non-spot, odd symbols).

    ccxt marks only Kraken's ``online`` pairs active; a pair in a restricted mode
    (``post_only``, ``limit_only``, ``cancel_only``, ``reduce_only``) is kept with its
    ``status`` so the caller can place what that mode admits and say why it places nothing
    on the others. The tick is Kraken's ``tick_size`` where given (it may be coarser than
    ``pair_decimals``, which only bounds how many decimals a price may have).
    """
    info = m.get("info") or {}
    status = _STATUSES.get(str(info.get("status")))
    if not m.get("spot") or (m.get("active") is False and status is None):
        return None
    limits = m.get("limits") or {}
    precision = m.get("precision") or {}
    try:
        check_symbol(symbol)
        return Market(
            symbol=symbol,
            base=str(m["base"]),
            quote=str(m["quote"]),
            tick=positive(info.get("tick_size")) or positive(precision.get("price")) or Decimal(0),
            lot=positive(precision.get("amount")) or Decimal(0),
            min_amount=to_decimal(info.get("ordermin"))
            or to_decimal(limits["amount"].get("min"))
            or ZERO,
            min_cost=to_decimal(info.get("costmin"))
            or to_decimal(limits["cost"].get("min"))
            or ZERO,
            maker_fee=to_decimal(m.get("maker")) or ZERO,
            taker_fee=to_decimal(m.get("taker")) or ZERO,
            status=status or PairStatus.ONLINE,
        )
    except (InvalidIdentifier, ValueError, KeyError, TypeError, AttributeError) as e:
        log.debug("exchange.market_skipped", symbol=symbol, reason=str(e))
        return None


def ticker_from(symbol: str, t: Any, now: datetime) -> Ticker | None:
    if not isinstance(t, dict):
        return None
    info = as_dict(t.get("info"))
    bid = positive(first(info.get("b"))) or positive(t.get("bid"))
    ask = positive(first(info.get("a"))) or positive(t.get("ask"))
    if bid is None or ask is None:
        return None
    last = positive(first(info.get("c"))) or positive(t.get("last"))
    ts = t.get("timestamp")
    stamp = datetime.fromtimestamp(ts / 1000, UTC) if isinstance(ts, int | float) else now
    return Ticker(symbol, bid, ask, stamp, last=last)


def order_from(raw: Any, symbol: str | None, exchange: str) -> ExchangeOrder:
    """A ccxt order as an ExchangeOrder, from the exchange's own strings where present.

    Raises BadRecordError when the answer lacks what an order must have.
    """
    info = as_dict(raw.get("info") if isinstance(raw, dict) else None)
    descr = as_dict(info.get("descr"))
    try:
        opened = to_decimal(info.get("opentm"))
        ts = raw.get("timestamp")
        if opened is not None:
            created = datetime.fromtimestamp(float(opened), UTC)
        elif isinstance(ts, int | float):
            created = datetime.fromtimestamp(ts / 1000, UTC)
        else:
            created = datetime.now(UTC)
        client_id = info["cl_ord_id"] if "cl_ord_id" in info else raw.get("clientOrderId")
        return ExchangeOrder(
            id=str(raw["id"]),
            symbol=str(raw.get("symbol") or symbol),
            side=Side(raw.get("side")),
            price=positive(descr.get("price")) or positive(raw.get("price")) or Decimal(0),
            amount=to_decimal(info.get("vol")) or to_decimal(raw.get("amount")) or Decimal(0),
            status=ORDER_STATUS.get(raw.get("status"), OrderStatus.OPEN),
            created_at=created,
            filled=to_decimal(info.get("vol_exec")) or to_decimal(raw.get("filled")) or ZERO,
            client_order_id=str(client_id) if client_id else None,
        )
    except (InvalidIdentifier, ValueError, KeyError, TypeError, AttributeError) as e:
        order_id = raw.get("id") if isinstance(raw, dict) else None
        raise BadRecordError(f"{exchange}:order:{order_id}", safe_text(str(raw)), str(e)) from e


def _first_decimal(*values: Any) -> Decimal:
    """The first value that converts to a non-zero Decimal, else 0."""
    for value in values:
        converted = to_decimal(value)
        if converted:
            return converted
    return ZERO
