"""Record ⇄ string conversion for the Redis store: the one place records become strings.

Values are JSON objects or hashes of plain fields, with money as decimal strings and times as
ISO 8601 with an offset. Every ``*_from_*`` function either returns a valid domain object or
raises one of the parse errors :func:`decode` turns into a
:class:`~mmops.errors.BadRecordError` carrying the key, the raw value and the reason: a
malformed record is quarantined by the caller, never an unhandled exception.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from mmops.domain.bounds import check_bounds
from mmops.domain.models import (
    ORDER_ID_PATTERN,
    SESSION_ID_PATTERN,
    SYMBOL_PATTERN,
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
from mmops.domain.pnl import StopLossLevel
from mmops.domain.records import (
    ReadResult,
    RunState,
    SettlementStatus,
    StopLossFigures,
    TakeProfitRecord,
    TpStatus,
)
from mmops.errors import BadRecordError, InvalidIdentifier

T = TypeVar("T")

# What parsing hostile input can raise: OverflowError from a time at the calendar's edge moved
# to UTC, RecursionError from JSON nested beyond the parser's depth.
_PARSE_ERRORS = (
    ValueError, TypeError, KeyError, InvalidOperation, InvalidIdentifier, OverflowError,
    RecursionError,
)  # fmt: skip
PARSE_ERRORS = _PARSE_ERRORS


def dec(value: Any) -> Decimal:
    """Parse a decimal string strictly: no floats, no NaN or infinities, and nothing beyond
    the bound of every amount (:mod:`mmops.domain.bounds`): ``1E+999999`` is finite, but one
    product of it overflows, so it is refused here, where the record's key is known."""
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise TypeError(f"expected a decimal string, got {type(value).__name__}")
    result = Decimal(value)
    if not result.is_finite():
        raise ValueError(f"not a finite number: {value!r}")
    return check_bounds(result)


def ts(value: Any) -> datetime:
    if not isinstance(value, str):
        raise TypeError(f"expected an ISO 8601 time, got {type(value).__name__}")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"time without a timezone: {value!r}")
    return parsed.astimezone(UTC)


def iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def aware(value: Any) -> datetime:
    """Parse an ISO 8601 time with its offset kept as written (so it is written back the same)."""
    if not isinstance(value, str):
        raise TypeError(f"expected an ISO 8601 time, got {type(value).__name__}")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"time without a timezone: {value!r}")
    return parsed


_INTEGER = re.compile(r"-?[0-9]{1,18}")


def integer(value: Any) -> int:
    """Parse an integer as ``str(int)`` writes it: digits after an optional minus (none of the
    spaces, plus signs or underscores ``int()`` would also take)."""
    if not isinstance(value, str) or _INTEGER.fullmatch(value) is None:
        raise ValueError(f"not an integer: {value!r}")
    return int(value)


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


# A take-profit's metadata (``tp_order:{S}:{O}``) is a hash of plain fields. ``tier`` and
# ``markup`` are "" for a take-profit recovered without its quote.

TAKE_PROFIT_FIELDS = (
    "position", "pair", "price", "amount", "tier", "markup", "client_order_id", "generation",
    "created_at", "status",
)  # fmt: skip


def take_profit_values(r: TakeProfitRecord) -> list[str]:
    """The metadata's values in the order of :data:`TAKE_PROFIT_FIELDS`."""
    return [
        r.position,
        r.pair,
        str(r.price),
        str(r.amount),
        "" if r.tier is None else str(r.tier),
        "" if r.markup is None else str(r.markup),
        r.client_order_id,
        str(r.generation),
        r.created_at.isoformat(),
        r.status.value,
    ]


def take_profit_to_fields(r: TakeProfitRecord) -> dict[str, str]:
    return dict(zip(TAKE_PROFIT_FIELDS, take_profit_values(r), strict=True))


# Scripts take a record's values as one argument, joined by ``|`` (one argument to encode
# instead of one per value: redis-py spends more per argument than per byte). No value may
# hold a ``|``: identifiers, decimals, ISO times and enum values cannot.

SEPARATOR = "|"


def joined(values: Sequence[str]) -> str:
    """``values`` as one script argument; ValueError if one of them holds the separator."""
    text = SEPARATOR.join(values)
    if text.count(SEPARATOR) != len(values) - 1:
        raise ValueError(f"a value holds {SEPARATOR!r}, which script arguments use: {values!r}")
    return text


def take_profit_from_fields(fields: Mapping[str, str]) -> TakeProfitRecord:
    tier, markup = fields["tier"], fields["markup"]
    return TakeProfitRecord(
        position=_text(fields["position"]),
        pair=_text(fields["pair"]),
        price=dec(fields["price"]),
        amount=dec(fields["amount"]),
        tier=integer(tier) if tier else None,
        markup=dec(markup) if markup else None,
        client_order_id=_text(fields["client_order_id"]),
        generation=integer(fields["generation"]),
        created_at=aware(fields["created_at"]),
        status=TpStatus(fields["status"]),
        amends=integer(fields.get("amends") or "0"),
    )


# A session's settlement status (``settlement:status:{S}``) is a hash of plain fields: the
# counts as integers, ``errors`` as a JSON list, ``dry_run`` as true/false, and the stop-loss's
# four figures once it has measured.

_STOPLOSS_FIELDS = ("equity", "peak_equity", "drawdown", "stoploss_level")


def settlement_status_to_fields(s: SettlementStatus) -> dict[str, str]:
    fields = {
        "state": s.state.value,
        "placed": str(s.placed),
        "skipped": str(s.skipped),
        "failed": str(s.failed),
        "errors": json.dumps(list(s.errors)),
        "duration_ms": str(s.duration_ms),
        "finished_at": s.finished_at.isoformat(),
        "worker": s.worker,
        "dry_run": "true" if s.dry_run else "false",
    }
    if s.stoploss is not None:
        fields["equity"] = str(s.stoploss.equity)
        fields["peak_equity"] = str(s.stoploss.peak_equity)
        fields["drawdown"] = str(s.stoploss.drawdown)
        fields["stoploss_level"] = s.stoploss.level.value
    return fields


def settlement_status_from_fields(fields: Mapping[str, str]) -> SettlementStatus:
    errors = json.loads(fields["errors"])
    if not isinstance(errors, list) or not all(isinstance(e, str) for e in errors):
        raise TypeError("errors must be a JSON list of strings")
    stoploss = None
    if any(name in fields for name in _STOPLOSS_FIELDS):
        stoploss = StopLossFigures(
            equity=dec(fields["equity"]),
            peak_equity=dec(fields["peak_equity"]),
            drawdown=dec(fields["drawdown"]),
            level=StopLossLevel(fields["stoploss_level"]),
        )
    return SettlementStatus(
        state=RunState(fields["state"]),
        placed=integer(fields["placed"]),
        skipped=integer(fields["skipped"]),
        failed=integer(fields["failed"]),
        errors=tuple(errors),
        duration_ms=integer(fields["duration_ms"]),
        finished_at=aware(fields["finished_at"]),
        worker=_text(fields["worker"]),
        dry_run=_flag(fields["dry_run"]),
        stoploss=stoploss,
    )


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}")
    return value


def _flag(value: Any) -> bool:
    if value not in ("true", "false"):
        raise ValueError(f"expected true or false, got {value!r}")
    return bool(value == "true")


# Text JSON writes as is (json.dumps escapes anything else): printable ASCII but " and \.
_PLAIN_JSON = re.compile(r"[ !#-\[\]-~]*")


def order_to_json(o: Order) -> str:
    """The order as compact JSON with its fields in this order (what migration's fast path
    reads). Written by hand, exactly as ``json.dumps`` would (the ids, pair, enums, decimals
    and time are plain by construction; a client order id that is not goes through
    ``json.dumps``), as a take-profit is recorded with every order placed."""
    cid = o.client_order_id
    if cid is None:
        cid_json = "null"
    elif _PLAIN_JSON.fullmatch(cid) is not None:
        cid_json = f'"{cid}"'
    else:
        cid_json = json.dumps(cid)
    return (
        f'{{"order_id":"{o.order_id}","session_id":"{o.session_id}","symbol":"{o.symbol}",'
        f'"side":"{o.side.value}","price":"{o.price}","amount":"{o.amount}",'
        f'"filled":"{o.filled}","status":"{o.status.value}","kind":"{o.kind.value}",'
        f'"client_order_id":{cid_json},"created_at":"{iso(o.created_at)}"}}'
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


# Lines for migration. Migration reads every record once and hands it to PostgreSQL as text, so
# it needs the domain's verdict on each record, not domain objects. Each record that passes
# becomes one line of tab-separated values (``records.FILL_LINE_COLUMNS``). A record in exactly
# the layout written above is checked by one regular expression assembled from the domain's own
# rules (identifier patterns, positive or non-negative plain decimals, a UTC time, then
# ``datetime`` for the calendar), and its matched groups are the line: every character those
# rules admit is plain in TSV. That costs about 1.5 µs a record against 8 µs for the full parse
# and a row writer. Any other record, valid or not, takes the full parse (``*_from_json``), so
# both paths accept exactly what the domain accepts. Either way money leaves as a plain decimal
# of at most 40 digits each side of the point: PostgreSQL's NUMERIC refuses some far larger
# values, which would fail the whole session.
#
# Every repetition is possessive (``{1,40}+``): none can take the character after it (a quote,
# a slash, a point), so giving characters back could never find another match, and the regex
# engine need not keep the states to try (a sixth of the match's time).
_DIGITS = r"[0-9]{1,40}+(?:\.[0-9]{1,40}+)?+"
_NON_NEGATIVE = f'"({_DIGITS})"'
_POSITIVE = f'"((?=[0.]*+[1-9]){_DIGITS})"'  # a non-zero digit before any other character
_UTC_TIME = r'"([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{6})?+\+00:00)"'


def _possessive(pattern: str) -> str:
    """One of the domain's identifier patterns with its bounded repetitions possessive."""
    return re.sub(r"(\{[0-9]+,[0-9]+\})", r"\1+", pattern)


_ID = f'"({_possessive(ORDER_ID_PATTERN)})"'
_OPTIONAL_ID = f'(?:null|"({_possessive(ORDER_ID_PATTERN)})")'
_SESSION = f'"({_possessive(SESSION_ID_PATTERN)})"'
_SYMBOL = f'"({_possessive(SYMBOL_PATTERN)})"'
_NULL = "\\N"
_SURROGATE = re.compile("[\ud800-\udfff]")
_TSV_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _one_of(values: type[Side] | type[OrderStatus] | type[OrderKind]) -> str:
    return '"(' + "|".join(re.escape(v.value) for v in values) + ')"'


@dataclass(frozen=True, slots=True)
class RecordLayout:
    """How one kind of record becomes a line: the layout its writer uses, the columns holding
    its session, pair and time (counted from 0: the pattern's groups are the columns), and the
    full parse for records in any other layout."""

    what: str
    pattern: re.Pattern[str]
    session_column: int
    symbol_column: int
    time_column: int
    parse: Callable[[Any], tuple[str | None, ...]]  # the columns but the Redis key


def _fill_columns(raw: Any) -> tuple[str | None, ...]:
    f = fill_from_json(raw)
    return (f.session_id, f.order_id, f.symbol, f.side.value, _plain(f.price),
            _plain(f.quantity), _plain(f.fee), iso(f.timestamp), f.trade_id)  # fmt: skip


def _order_columns(raw: Any) -> tuple[str | None, ...]:
    o = order_from_json(raw)
    if o.client_order_id is not None and not isinstance(o.client_order_id, str):
        raise TypeError(f"client_order_id must be a string, got {o.client_order_id!r}")
    return (o.order_id, o.session_id, o.symbol, o.side.value, _plain(o.price), _plain(o.amount),
            _plain(o.filled), o.status.value, o.kind.value, o.client_order_id,
            iso(o.created_at))  # fmt: skip


FILLS = RecordLayout(
    "fill",
    re.compile(
        f'{{"session_id":{_SESSION},"order_id":{_ID},"symbol":{_SYMBOL},'
        f'"side":{_one_of(Side)},"price":{_POSITIVE},"quantity":{_POSITIVE},'
        f'"fee":{_NON_NEGATIVE},"timestamp":{_UTC_TIME},"trade_id":{_OPTIONAL_ID}}}'
    ),
    session_column=0,
    symbol_column=2,
    time_column=7,
    parse=_fill_columns,
)
ORDERS = RecordLayout(
    "order",
    re.compile(
        f'{{"order_id":{_ID},"session_id":{_SESSION},"symbol":{_SYMBOL},'
        f'"side":{_one_of(Side)},"price":{_POSITIVE},"amount":{_POSITIVE},'
        f'"filled":{_NON_NEGATIVE},"status":{_one_of(OrderStatus)},"kind":{_one_of(OrderKind)},'
        f'"client_order_id":{_OPTIONAL_ID},"created_at":{_UTC_TIME}}}'
    ),
    session_column=1,
    symbol_column=2,
    time_column=10,
    parse=_order_columns,
)


def lines(
    layout: RecordLayout, key: str, session_id: str, symbol: str, records: Mapping[str, Any]
) -> ReadResult[str]:
    """TSV lines of a chunk of ``records`` (field name → stored text) read from ``key``, the
    hash of ``symbol`` in ``session_id``, each ending with the record's key. A record the domain
    refuses, or one of another session or pair, is in ``bad`` with the reason."""
    result: ReadResult[str] = ReadResult()
    items, bad = result.items, result.bad
    match, full_parse = layout.pattern.fullmatch, layout.parse
    session_at, symbol_at, at = layout.session_column, layout.symbol_column, layout.time_column
    prefix = f"{key}#"
    tail = f"\t{prefix}"
    plain_names = _tsv_plain(records)  # one look at them all: they rarely need escaping
    for name, raw in records.items():
        try:
            field = name if plain_names else _tsv(name)
            found = match(raw) if isinstance(raw, str) else None
            if found is None:
                columns = full_parse(raw)
                line = "\t".join(_NULL if c is None else _tsv(c) for c in columns)
            else:
                groups: tuple[str, ...] = found.groups(_NULL)
                datetime.fromisoformat(groups[at])  # a real date: no 30 February
                line = "\t".join(groups)
                columns = groups
        except _PARSE_ERRORS as e:
            bad.append(BadRecordError(prefix + name, raw, f"{type(e).__name__}: {e}"))
            continue
        if columns[session_at] != session_id or columns[symbol_at] != symbol:
            reason = (f"{layout.what} of {columns[session_at]}/{columns[symbol_at]}"
                      f" under {symbol}")  # fmt: skip
            bad.append(BadRecordError(prefix + name, raw, reason))
            continue
        items.append(f"{line}{tail}{field}\n")
    return result


def _tsv_plain(texts: Iterable[Any]) -> bool:
    """Whether every one of ``texts`` can go in a TSV column as it is: text, ASCII (so no lone
    surrogate), no NUL, nothing to escape."""
    try:
        text = "".join(texts)
    except TypeError:
        return False
    return text.isascii() and not any(c in text for c in "\x00\\\t\n\r")


def _tsv(text: str) -> str:
    """``text`` escaped for a TSV column (a quick scan first: field names rarely need it).
    Raises ValueError for text PostgreSQL cannot store: a NUL, or a lone surrogate."""
    if "\x00" in text or not (text.isascii() or _SURROGATE.search(text) is None):
        raise ValueError(f"text PostgreSQL cannot store (a NUL or a lone surrogate): {text!r}")
    if "\\" in text or "\t" in text or "\n" in text or "\r" in text:
        return text.translate(_TSV_ESCAPES)
    return text


def _plain(value: Decimal) -> str:
    """A non-negative amount as a plain decimal, or ValueError if it has over 40 digits on a
    side of the point (checked on the exponent first: ``1e999999999`` is never written out)."""
    if not value:
        return "0"  # whatever its exponent: 0E+50 and -0 are 0
    exponent = value.as_tuple().exponent
    if value.adjusted() >= 40 or not isinstance(exponent, int) or exponent < -40:
        raise ValueError(f"{value} has more than 40 digits before or after the point")
    return format(value, "f")  # exact: no rounding


# A position hash holds one field per contribution, summed here with Decimal arithmetic so
# Redis never does money maths in floating point:
#   symbol, opened_at, v (fills recorded), g (client ids fenced: the next generation),
#   c (when its first take-profit was recorded)
#   f:<fill key> = "qty|price|fee"        tp:<order id> = amount of a live take-profit
#   p:<generation> = "client id|amount|deadline ms" (markers older than deadlines have no
#                    third part)          x:<ref> = amount closed otherwise


def fill_contribution(f: Fill) -> str:
    return f"{f.quantity}|{f.price}|{f.fee}"


def pending_value(pending: PendingTakeProfit) -> str:
    deadline = "" if pending.deadline is None else f"|{int(pending.deadline.timestamp() * 1000)}"
    return f"{pending.client_order_id}|{pending.amount}{deadline}"


def pending_from_value(generation: str, value: str) -> PendingTakeProfit:
    client_id, amount, *deadline = value.split("|")
    if len(deadline) > 1:
        raise ValueError(f"a pending marker has at most three parts, got {value!r}")
    at = None
    if deadline:
        millis = int(deadline[0])
        if not 0 < millis < _YEAR_10000_MS:
            raise ValueError(f"a pending marker's deadline is out of range: {millis}")
        at = datetime.fromtimestamp(millis / 1000, UTC)
    return PendingTakeProfit(int(generation), client_id, dec(amount), at)


_YEAR_10000_MS = 253_402_300_800_000


def position_from_fields(session_id: str, position_id: str, fields: Mapping[str, str]) -> Position:
    filled = cost = fees = closed = ZERO
    take_profits: list[tuple[str, Decimal]] = []
    pending: list[PendingTakeProfit] = []
    for name, value in fields.items():
        kind, _, ref = name.partition(":")
        if kind == "f":
            qty, price, fee = _fill_contribution(name, value)
            filled += qty
            cost += qty * price
            fees += fee
        elif kind == "tp":
            take_profits.append((ref, _held(name, value)))
        elif kind == "p":
            pending.append(pending_from_value(ref, value))
        elif kind == "x":
            closed += _held(name, value)
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


def _fill_contribution(name: str, value: str) -> tuple[Decimal, Decimal, Decimal]:
    """A buy fill's ``qty|price|fee``, as :class:`Fill` admits them: a quantity or price that
    is not positive, or a negative fee, would shrink the position and its coverage without a
    word, so it makes the position a bad record instead."""
    qty_s, price_s, fee_s = value.split("|")
    qty, price, fee = dec(qty_s), dec(price_s), dec(fee_s)
    if qty <= 0 or price <= 0 or fee < 0:
        raise ValueError(f"{name} = {value!r}: quantity and price must be > 0, fee >= 0")
    return qty, price, fee


def _held(name: str, value: str) -> Decimal:
    """An amount a take-profit holds or an exit closed: a negative one would uncover (and
    sell again) what is already sold, so it makes the position a bad record."""
    amount = dec(value)
    if amount < 0:
        raise ValueError(f"{name} = {value!r}: an amount held or closed must be >= 0")
    return amount
