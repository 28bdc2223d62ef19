"""Record ⇄ string conversion for the Redis store.

Values are JSON objects with money as decimal strings and times as ISO 8601 with an offset.
Every ``*_from_*`` function either returns a valid domain object or raises
:class:`~mmops.errors.BadRecordError` carrying the key, the raw value and the reason: a
malformed record is quarantined by the caller, never an unhandled exception.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from mmops.domain.models import (
    ZERO,
    Fill,
    Order,
    OrderKind,
    OrderStatus,
    PendingTakeProfit,
    Position,
    Session,
    SessionStatus,
    Side,
)
from mmops.errors import BadRecordError, InvalidIdentifier

T = TypeVar("T")

_PARSE_ERRORS = (ValueError, TypeError, KeyError, InvalidOperation, InvalidIdentifier)


def dec(value: Any) -> Decimal:
    """Parse a decimal string strictly: no floats, no NaN or infinities."""
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise TypeError(f"expected a decimal string, got {type(value).__name__}")
    result = Decimal(value)
    if not result.is_finite():
        raise ValueError(f"not a finite number: {value!r}")
    return result


def ts(value: Any) -> datetime:
    if not isinstance(value, str):
        raise TypeError(f"expected an ISO 8601 time, got {type(value).__name__}")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"time without a timezone: {value!r}")
    return parsed.astimezone(UTC)


def iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def millis(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def decode(key: str, raw: Any, parse: Callable[[Any], T]) -> T:
    """Run ``parse`` on ``raw``; turn any parse failure into a BadRecordError for ``key``."""
    try:
        return parse(raw)
    except BadRecordError:
        raise
    except _PARSE_ERRORS as e:
        raise BadRecordError(key, raw, f"{type(e).__name__}: {e}") from e


def _json_object(raw: Any) -> dict[str, Any]:
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise TypeError("expected a JSON object")
    return data


# Sessions are a hash of plain fields.


def session_to_fields(s: Session) -> dict[str, str]:
    return {
        "id": s.id,
        "status": s.status.value,
        "mode": s.mode,
        "exchange": s.exchange,
        "pairs": json.dumps(list(s.pairs)),
        "capital": str(s.capital),
        "started_at": iso(s.started_at),
        "ended_at": iso(s.ended_at) if s.ended_at else "",
    }


def session_from_fields(fields: Mapping[str, str]) -> Session:
    pairs = json.loads(fields["pairs"])
    if not isinstance(pairs, list):
        raise TypeError("pairs must be a JSON list")
    return Session(
        id=fields["id"],
        pairs=tuple(pairs),
        started_at=ts(fields["started_at"]),
        status=SessionStatus(fields["status"]),
        mode=fields["mode"],
        exchange=fields["exchange"],
        capital=dec(fields["capital"]),
        ended_at=ts(fields["ended_at"]) if fields.get("ended_at") else None,
    )


def order_to_json(o: Order) -> str:
    return json.dumps(
        {
            "order_id": o.order_id,
            "session_id": o.session_id,
            "symbol": o.symbol,
            "side": o.side.value,
            "price": str(o.price),
            "amount": str(o.amount),
            "filled": str(o.filled),
            "status": o.status.value,
            "kind": o.kind.value,
            "client_order_id": o.client_order_id,
            "created_at": iso(o.created_at),
        },
        separators=(",", ":"),
    )


def order_from_json(raw: Any) -> Order:
    d = _json_object(raw)
    return Order(
        session_id=d["session_id"],
        order_id=d["order_id"],
        symbol=d["symbol"],
        side=Side(d["side"]),
        price=dec(d["price"]),
        amount=dec(d["amount"]),
        created_at=ts(d["created_at"]),
        status=OrderStatus(d.get("status", "open")),
        filled=dec(d.get("filled", "0")),
        kind=OrderKind(d.get("kind", "entry")),
        client_order_id=d.get("client_order_id"),
    )


def fill_to_json(f: Fill) -> str:
    return json.dumps(
        {
            "session_id": f.session_id,
            "order_id": f.order_id,
            "symbol": f.symbol,
            "side": f.side.value,
            "price": str(f.price),
            "quantity": str(f.quantity),
            "fee": str(f.fee),
            "timestamp": iso(f.timestamp),
            "trade_id": f.trade_id,
        },
        separators=(",", ":"),
    )


def fill_from_json(raw: Any) -> Fill:
    d = _json_object(raw)
    return Fill(
        session_id=d["session_id"],
        order_id=d["order_id"],
        symbol=d["symbol"],
        side=Side(d["side"]),
        price=dec(d["price"]),
        quantity=dec(d["quantity"]),
        fee=dec(d["fee"]),
        timestamp=ts(d["timestamp"]),
        trade_id=d.get("trade_id"),
    )


# A position hash holds one field per contribution, summed here with Decimal arithmetic so
# Redis never does money maths in floating point:
#   symbol, opened_at, v (fills recorded), g (take-profits recorded: the next generation),
#   c (when its first take-profit was recorded)
#   f:<fill key> = "qty|price|fee"        tp:<order id> = amount of a live take-profit
#   p:<generation> = "client id|amount"   x:<ref> = amount closed otherwise


def fill_contribution(f: Fill) -> str:
    return f"{f.quantity}|{f.price}|{f.fee}"


def pending_value(client_order_id: str, amount: Decimal) -> str:
    return f"{client_order_id}|{amount}"


def position_from_fields(session_id: str, position_id: str, fields: Mapping[str, str]) -> Position:
    filled = cost = fees = closed = ZERO
    take_profits: list[tuple[str, Decimal]] = []
    pending: list[PendingTakeProfit] = []
    for name, value in fields.items():
        kind, _, ref = name.partition(":")
        if kind == "f":
            qty_s, price_s, fee_s = value.split("|")
            qty, price = dec(qty_s), dec(price_s)
            filled += qty
            cost += qty * price
            fees += dec(fee_s)
        elif kind == "tp":
            take_profits.append((ref, dec(value)))
        elif kind == "p":
            client_id, amount = value.split("|")
            pending.append(PendingTakeProfit(int(ref), client_id, dec(amount)))
        elif kind == "x":
            closed += dec(value)
    return Position(
        session_id=session_id,
        position_id=position_id,
        symbol=fields["symbol"],
        opened_at=ts(fields["opened_at"]),
        filled=filled,
        cost=cost,
        fees=fees,
        covered=sum((amount for _, amount in take_profits), ZERO),
        closed=closed,
        version=int(fields.get("v", "0")),
        generation=int(fields.get("g", "0")),
        take_profits=tuple(sorted(take_profits)),
        pending=tuple(sorted(pending, key=lambda p: p.generation)),
        first_covered_at=ts(fields["c"]) if fields.get("c") else None,
    )
