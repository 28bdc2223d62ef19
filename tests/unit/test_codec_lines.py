"""Migration lines: the Redis codec turns stored records into PostgreSQL COPY text lines,
accepting exactly what the domain accepts, whichever path (fast or full parse) a record takes."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mmops.adapters.redis import codec
from mmops.adapters.redis.codec import FILLS, ORDERS, lines
from mmops.domain.models import (
    ORDER_ID_PATTERN,
    SESSION_ID_PATTERN,
    SYMBOL_PATTERN,
    Fill,
    Order,
    OrderKind,
    OrderStatus,
    Side,
)
from mmops.domain.records import FILL_LINE_COLUMNS, ORDER_LINE_COLUMNS

D = Decimal
FAST = settings(max_examples=200, deadline=None)
MONEY = {"price", "quantity", "fee", "amount", "filled"}
TIMES = {"timestamp", "created_at"}
PLAIN = re.compile(r"[0-9]{1,40}(?:\.[0-9]{1,40})?")  # the 40-digit rule, restated


@dataclass(frozen=True)
class Kind:
    """One kind of record: its layout, its line's columns, its writer and its domain parse."""

    layout: Any
    columns: tuple[str, ...]
    to_json: Callable[[Any], str]
    from_json: Callable[[Any], Any]
    key: str


FILL = Kind(FILLS, FILL_LINE_COLUMNS, codec.fill_to_json, codec.fill_from_json, "fills:{s}:P/Q")
ORDER = Kind(
    ORDERS, ORDER_LINE_COLUMNS, codec.order_to_json, codec.order_from_json, "orders:{s}:P/Q"
)


def kind_of(obj: Fill | Order) -> Kind:
    return FILL if isinstance(obj, Fill) else ORDER


# Strategies: valid domain objects.

session_ids = st.from_regex(SESSION_ID_PATTERN, fullmatch=True)
order_ids = st.from_regex(ORDER_ID_PATTERN, fullmatch=True)
symbols = st.from_regex(SYMBOL_PATTERN, fullmatch=True)


def amounts(*, positive: bool, plain: bool) -> st.SearchStrategy[Decimal]:
    """Up to 12 digits each side of the point; ``plain=False`` adds exponent forms (1E+3), -0
    and zeros with exponents, which the writer emits as they are and the fast path refuses."""
    whole = st.integers(0, 10**12 - 1)
    fraction = st.text("0123456789", max_size=12)
    values = st.builds(lambda w, f: D(f"{w}.{f}" if f else str(w)), whole, fraction)
    if not plain:
        values = st.one_of(values, values.map(Decimal.normalize), values.map(lambda d: d.scaleb(3)))
        if not positive:
            values = st.one_of(values, st.sampled_from([D("-0"), D("0E-7"), D("0E+2"), D("-0.00")]))
    return values.filter(lambda d: d > 0) if positive else values


offsets = st.one_of(
    st.just(UTC),
    st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(lambda m: timezone(timedelta(minutes=m))),
)
# Away from the ends of the calendar: see test_a_time_at_the_edge_of_the_calendar_is_bad_...
times = st.datetimes(datetime(1970, 1, 1), datetime(2100, 1, 1), timezones=offsets)


def fills(*, plain: bool = False) -> st.SearchStrategy[Fill]:
    return st.builds(
        Fill,
        session_id=session_ids,
        order_id=order_ids,
        symbol=symbols,
        side=st.sampled_from(Side),
        price=amounts(positive=True, plain=plain),
        quantity=amounts(positive=True, plain=plain),
        fee=amounts(positive=False, plain=plain),
        timestamp=times,
        trade_id=st.none() | order_ids,
    )


def orders(
    *, plain: bool = False, client_ids: st.SearchStrategy[str] = order_ids
) -> st.SearchStrategy[Order]:
    return st.builds(
        Order,
        session_id=session_ids,
        order_id=order_ids,
        symbol=symbols,
        side=st.sampled_from(Side),
        price=amounts(positive=True, plain=plain),
        amount=amounts(positive=True, plain=plain),
        created_at=times,
        status=st.sampled_from(OrderStatus),
        filled=amounts(positive=False, plain=plain),
        kind=st.sampled_from(OrderKind),
        client_order_id=st.none() | client_ids,
    )


objects = st.one_of(
    fills(),
    orders(client_ids=order_ids | st.text(st.characters(blacklist_categories=["Cs"],
                                                        blacklist_characters="\x00"))),
)  # fmt: skip
canonical_objects = st.one_of(fills(plain=True), orders(plain=True))


# Reading a line back, as PostgreSQL's COPY text format does.

_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_UNESCAPED = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}


def unescape(column: str) -> str | None:
    if column == "\\N":
        return None
    return _ESCAPE.sub(lambda m: _UNESCAPED[m[1]], column)


def read_line(line: str, names: tuple[str, ...]) -> dict[str, str | None]:
    assert line.endswith("\n")
    body = line[:-1]
    assert "\n" not in body and "\r" not in body
    columns = body.split("\t")
    assert len(columns) == len(names)
    return dict(zip(names, map(unescape, columns), strict=True))


def assert_line_holds(line: str, obj: Fill | Order, record_key: str) -> None:
    """Each column of ``line`` reads back as the object's value (money as a plain decimal,
    times in UTC), and the last as the record's key."""
    kind = kind_of(obj)
    read = read_line(line, kind.columns)
    assert read.pop("redis_key") == record_key
    for name, column in read.items():
        value = getattr(obj, name)
        if name in MONEY:
            assert column is not None and PLAIN.fullmatch(column), (name, column)
            assert D(column) == value, name
        elif name in TIMES:
            assert column is not None
            t = datetime.fromisoformat(column)
            assert t == value and t.utcoffset() == timedelta(0), (name, column)
        else:
            assert column == value, name


def same_columns(a: str, b: str, names: tuple[str, ...]) -> None:
    """Two lines say the same thing: money numerically, times as instants, the rest exactly."""
    read_a, read_b = read_line(a, names), read_line(b, names)
    for name in names:
        x, y = read_a[name], read_b[name]
        if name in MONEY:
            assert x is not None and y is not None and D(x) == D(y), (name, x, y)
        elif name in TIMES:
            assert x is not None and y is not None
            assert datetime.fromisoformat(x) == datetime.fromisoformat(y), (name, x, y)
        else:
            assert x == y, name


def one(kind: Kind, raw: Any, session_id: str, symbol: str, name: str = "f") -> Any:
    return lines(kind.layout, kind.key, session_id, symbol, {name: raw})


def domain_verdict(kind: Kind, raw: Any) -> Fill | Order | None:
    """The object the domain makes of ``raw``, or None if it refuses it (or the 40-digit rule
    does: a larger plain amount would not fit PostgreSQL's NUMERIC)."""
    try:
        obj: Fill | Order = kind.from_json(raw)
    except Exception:
        return None
    for name in MONEY & set(kind.columns):
        value = getattr(obj, name)
        # Zero is zero whatever its exponent (0E-50 is written "0"), so it always fits.
        if not value.is_zero() and not PLAIN.fullmatch(format(value.copy_abs(), "f")):
            return None
    # Order does not check client_order_id, so order_from_json takes any JSON value there;
    # a line column can only hold text, and lines refuses anything but a string or null.
    # See test_a_client_order_id_that_is_not_text_is_bad_though_order_from_json_takes_it.
    if isinstance(obj, Order) and not isinstance(obj.client_order_id, str | None):
        return None
    # Nor can a text column hold NUL (PostgreSQL refuses it), which Order does not check either.
    if isinstance(obj, Order) and "\x00" in (obj.client_order_id or ""):
        return None
    return obj


def non_canonical(raw: str, how: str) -> str:
    data = json.loads(raw)
    if how == "indent":
        return json.dumps(data, indent=1)
    if how == "sorted":
        return json.dumps(data, sort_keys=True, separators=(",", ":"))
    if how == "spaced":
        return json.dumps(data)
    return json.dumps(dict(reversed(data.items())), separators=(",", ":"))


LAYOUTS = st.sampled_from(["indent", "sorted", "spaced", "reversed"])


# 1. Any valid object becomes one line that reads back as the object.


@FAST
@given(obj=objects, name=order_ids)
def test_any_valid_record_becomes_one_line_that_reads_back_as_the_object(
    obj: Fill | Order, name: str
) -> None:
    kind = kind_of(obj)
    result = one(kind, kind.to_json(obj), obj.session_id, obj.symbol, name)
    assert result.bad == []
    assert len(result.items) == 1
    assert_line_holds(result.items[0], obj, f"{kind.key}#{name}")


# 2. The fast path and the full parse agree.


@FAST
@given(obj=canonical_objects, how=LAYOUTS)
def test_the_fast_path_and_the_full_parse_write_the_same_line(obj: Fill | Order, how: str) -> None:
    kind = kind_of(obj)
    raw = kind.to_json(obj)
    other = non_canonical(raw, how)
    assert kind.layout.pattern.fullmatch(raw) is not None  # fast path
    assert kind.layout.pattern.fullmatch(other) is None  # full parse
    fast = one(kind, raw, obj.session_id, obj.symbol)
    full = one(kind, other, obj.session_id, obj.symbol)
    assert fast.bad == full.bad == []
    assert len(fast.items) == len(full.items) == 1
    same_columns(fast.items[0], full.items[0], kind.columns)
    assert_line_holds(full.items[0], obj, f"{kind.key}#f")


# 3. Hostile records: bad exactly when the domain refuses them, never an exception.

MISSING = object()
HOSTILE_MONEY: list[Any] = [
    "NaN", "-NaN", "sNaN", "Infinity", "-Infinity", "inf", "-1", "-0.0001", "0", "0.0", "00",
    "-0", "", " ", " 1 ", "1_000", "1.", ".5", "1E+3", "1e-3", "0E-50", "1e999999", "-1e999999",
    "1" * 41, "1" * 40, "1" * 41 + ".5", "0." + "1" * 40, "0." + "0" * 40 + "1", "0x10",
    1, 0, -1, 10**41, 10**40 - 1, 1.5, 0.0, None, True, [], {"a": "1"},
]  # fmt: skip
HOSTILE_TIME: list[Any] = [
    "2026-02-30T00:00:00+00:00", "2026-01-01T00:00:00", "2026-01-01T00:00:00Z",
    "2026-01-01", "2026-01-01T23:59:60+00:00", "2026-01-01T24:00:00+00:00",
    "2026-01-01T00:00:00.5+00:00", "2026-01-01T05:30:00+05:30", "2026-13-01T00:00:00+00:00",
    "2025-02-29T00:00:00+00:00", "2024-02-29T00:00:00+00:00", "2026-04-31T12:00:00+00:00",
    "0000-01-01T00:00:00+00:00", "0001-01-01T00:00:00+00:00", "", 1767225600, None,
]  # fmt: skip
HOSTILE_TEXT: list[Any] = [
    "o 1", "o{1}", "a}b", "{s}", "a:b", "é", "x" * 64, "x" * 65, "x" * 128, "x" * 129,
    "-x", ".x", "BTC/USD", "BTC/USDT", "btc/usd", "BTC/USD/ETH", "BTCUSD", "",
    "buy", "sell", "BUY", "open", "filled", "canceled", "entry", "take_profit", "exit", "x",
    "o1\t", "o1\n", "\\", '"', "\x00", 1, None, True, [], {},
]  # fmt: skip
HOSTILE = HOSTILE_MONEY + HOSTILE_TIME + HOSTILE_TEXT


def hostile(field: str) -> st.SearchStrategy[Any]:
    """A replacement for ``field``: mostly one aimed at its kind of value, else anything."""
    aimed = HOSTILE_MONEY if field in MONEY else HOSTILE_TIME if field in TIMES else HOSTILE_TEXT
    anything = st.one_of(st.text(max_size=12), st.integers(), st.floats(), st.sampled_from(HOSTILE))
    return st.one_of(st.sampled_from(aimed), st.just(MISSING), anything)


@FAST
@given(obj=canonical_objects, data=st.data())
def test_a_mutated_record_is_bad_exactly_when_the_domain_refuses_it(
    obj: Fill | Order, data: st.DataObject
) -> None:
    kind = kind_of(obj)
    record = json.loads(kind.to_json(obj))
    field = data.draw(st.sampled_from(sorted(record)), label="field")
    value = data.draw(hostile(field), label="value")
    if value is MISSING:
        del record[field]
    else:
        record[field] = value
    raw = json.dumps(record, separators=(",", ":"))
    _check_verdict(kind, raw, obj.session_id, obj.symbol)


def _check_verdict(kind: Kind, raw: str, session_id: str, symbol: str) -> None:
    """``raw`` is a line exactly when the domain takes it for this session and pair, else bad."""
    expected = domain_verdict(kind, raw)
    result = one(kind, raw, session_id, symbol)
    assert len(result.items) + len(result.bad) == 1
    if expected is not None and (expected.session_id, expected.symbol) == (session_id, symbol):
        assert_line_holds(result.items[0], expected, f"{kind.key}#f")
    else:
        (bad,) = result.bad
        assert (bad.key, bad.raw) == (f"{kind.key}#f", raw)
        assert bad.reason


@pytest.mark.parametrize("compact", [True, False], ids=["fast-path", "full-parse"])
@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("9" * 40, True),
        ("9" * 41, False),
        ("0." + "0" * 39 + "1", True),
        ("0." + "0" * 40 + "1", False),
        ("9" * 40 + "." + "9" * 40, True),
        ("1E+39", True),
        ("1E+40", False),
        ("1E-40", True),
        ("1E-41", False),
        ("1e999999", False),
    ],
)
def test_an_amount_over_40_digits_on_a_side_of_the_point_is_bad(
    value: str, ok: bool, compact: bool
) -> None:
    for kind, field in ((FILL, "price"), (FILL, "fee"), (ORDER, "amount"), (ORDER, "filled")):
        raw = _valid_record(kind, {field: value}, compact=compact)
        fast = compact and PLAIN.fullmatch(value) is not None
        assert (kind.layout.pattern.fullmatch(raw) is not None) == fast
        result = one(kind, raw, "s1", "BTC/USD")
        assert len(result.items) == int(ok), (kind.layout.what, field)
        _check_verdict(kind, raw, "s1", "BTC/USD")


@pytest.mark.parametrize("compact", [True, False], ids=["fast-path", "full-parse"])
@pytest.mark.parametrize("value", ["0", "00", "0.0", "0.000", "-0", "0E-3", 0])
def test_a_zero_price_or_quantity_is_bad_and_a_zero_fee_or_filled_is_not(
    value: Any, compact: bool
) -> None:
    fields = {FILL: ("price", "quantity", "fee"), ORDER: ("price", "amount", "filled")}
    for kind, (first, second, may_be_zero) in fields.items():
        for field, ok in ((first, False), (second, False), (may_be_zero, True)):
            raw = _valid_record(kind, {field: value}, compact=compact)
            result = one(kind, raw, "s1", "BTC/USD")
            assert len(result.items) == int(ok), (kind.layout.what, field)
            _check_verdict(kind, raw, "s1", "BTC/USD")


@pytest.mark.parametrize("compact", [True, False], ids=["fast-path", "full-parse"])
@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("2024-02-29T00:00:00+00:00", True),
        ("2025-02-29T00:00:00+00:00", False),
        ("2026-02-30T00:00:00+00:00", False),
        ("2026-04-31T12:00:00+00:00", False),
        ("2026-01-01T23:59:60+00:00", False),
        ("2026-01-01T24:00:00+00:00", False),
        ("2026-00-01T00:00:00+00:00", False),
        ("0000-01-01T00:00:00+00:00", False),
        ("9999-12-31T23:59:59.999999+00:00", True),
    ],
)
def test_a_time_that_is_not_on_the_calendar_is_bad_on_either_path(
    value: str, ok: bool, compact: bool
) -> None:
    for kind, field in ((FILL, "timestamp"), (ORDER, "created_at")):
        raw = _valid_record(kind, {field: value}, compact=compact)
        assert (kind.layout.pattern.fullmatch(raw) is not None) == compact
        result = one(kind, raw, "s1", "BTC/USD")
        assert len(result.items) == int(ok), (kind.layout.what, value)
        _check_verdict(kind, raw, "s1", "BTC/USD")


@pytest.mark.parametrize("kind", [FILL, ORDER], ids=["fill", "order"])
@FAST
@given(raw=st.text())
@example(raw="")
@example(raw="{")
@example(raw="null")
@example(raw="[]")
@example(raw="{}")
@example(raw='"x"')
@example(raw="NaN")
@example(raw='{"session_id":')
@example(raw="\x00")
def test_arbitrary_text_never_raises_and_lands_in_bad_with_a_reason(kind: Kind, raw: str) -> None:
    result = one(kind, raw, "s1", "BTC/USD")
    assert domain_verdict(kind, raw) is None
    assert result.items == []
    (bad,) = result.bad
    assert (bad.key, bad.raw) == (f"{kind.key}#f", raw)
    assert bad.reason


@pytest.mark.parametrize("kind", [FILL, ORDER], ids=["fill", "order"])
@pytest.mark.parametrize("raw", [None, 5, b"\xff", b"{}", ["x"]])
def test_a_value_that_is_not_text_lands_in_bad_with_a_reason(kind: Kind, raw: Any) -> None:
    result = one(kind, raw, "s1", "BTC/USD")
    assert result.items == []
    (bad,) = result.bad
    assert bad.raw is raw and bad.reason


@pytest.mark.parametrize("client_order_id", [5, 1.5, True, ["c1"], {"c": 1}])
def test_a_client_order_id_that_is_not_text_is_bad_though_order_from_json_takes_it(
    client_order_id: Any,
) -> None:
    # A deliberate narrowing in lines (Order itself does not check client_order_id): pinned
    # here so a change on either side is noticed.
    order = Order("s1", "o1", "BTC/USD", Side.BUY, D("1"), D("1"), datetime(2026, 1, 1, tzinfo=UTC))
    record = json.loads(codec.order_to_json(order))
    record["client_order_id"] = client_order_id
    raw = json.dumps(record)
    assert codec.order_from_json(raw).client_order_id == client_order_id
    result = one(ORDER, raw, "s1", "BTC/USD")
    assert result.items == []
    assert "client_order_id" in result.bad[0].reason


# Records that once escaped lines as an exception instead of landing in bad.


# A time at the ends of datetime's range overflows when moved to UTC (codec.ts), and the
# domain takes "1e999999999999999999" (finite, positive): written out in full it would be 10**18
# characters, so the 40-digit rule is checked on the exponent first.
@pytest.mark.parametrize(
    ("kind", "field", "value", "reason"),
    [
        (FILL, "timestamp", "0001-01-01T00:00:00+01:00", "OverflowError"),
        (ORDER, "created_at", "9999-12-31T23:30:00-01:00", "OverflowError"),
        (FILL, "fee", "1e999999999999999999", "40 digits"),
        (ORDER, "price", "1e999999999999999999", "40 digits"),
    ],
    ids=["fill-year-1", "order-year-9999", "fill-fee-huge", "order-price-huge"],
)
def test_a_value_that_once_raised_out_of_lines_is_bad_with_a_reason(
    kind: Kind, field: str, value: str, reason: str
) -> None:
    result = one(kind, _valid_record(kind, {field: value}), "s1", "BTC/USD")
    assert result.items == [] and len(result.bad) == 1
    assert reason in result.bad[0].reason


# json.loads raises RecursionError on deeply nested JSON.
@pytest.mark.parametrize("kind", [FILL, ORDER], ids=["fill", "order"])
def test_deeply_nested_json_is_bad_not_an_exception(kind: Kind) -> None:
    result = one(kind, "[" * 100_000, "s1", "BTC/USD")
    assert result.items == [] and len(result.bad) == 1


@pytest.mark.parametrize("kind", [FILL, ORDER], ids=["fill", "order"])
@pytest.mark.parametrize("text", ["a\x00b", "x\ud800y"], ids=["nul", "lone-surrogate"])
def test_text_postgresql_cannot_store_is_bad_in_a_field_name_or_a_column(
    kind: Kind, text: str
) -> None:
    """A NUL or a lone surrogate would fail the whole session's COPY."""
    valid = _valid_record(kind, {}, compact=True)
    by_name = lines(kind.layout, "h", "s1", "BTC/USD", {text: valid})
    assert by_name.items == [] and "cannot store" in by_name.bad[0].reason
    column = "client_order_id" if kind is ORDER else "trade_id"
    by_value = one(kind, _valid_record(kind, {column: text}), "s1", "BTC/USD")
    assert by_value.items == [] and len(by_value.bad) == 1


@pytest.mark.parametrize("fee", ["0e-999999999999999999", "0E+50", "-0", "0.000"])
def test_a_zero_fee_with_any_exponent_is_written_as_0(fee: str) -> None:
    """The domain takes these (zero is finite and not negative); written out they are 0."""
    [line] = one(FILL, _valid_record(FILL, {"fee": fee}), "s1", "BTC/USD").items
    assert read_line(line, FILL_LINE_COLUMNS)["fee"] == "0"


def _valid_record(kind: Kind, changes: dict[str, Any], *, compact: bool = False) -> str:
    """A valid record of s1 on BTC/USD with ``changes``, in the writer's layout if ``compact``."""
    t = datetime(2026, 1, 1, tzinfo=UTC)
    obj: Fill | Order
    if kind is FILL:
        obj = Fill("s1", "o1", "BTC/USD", Side.BUY, D("1"), D("1"), D("0"), t)
    else:
        obj = Order("s1", "o1", "BTC/USD", Side.BUY, D("1"), D("1"), t)
    record = {**json.loads(kind.to_json(obj)), **changes}
    return json.dumps(record, separators=(",", ":") if compact else None)


# 4. A record of another session or pair is bad, and the reason names them.


@FAST
@given(obj=objects, other_session=session_ids, other_symbol=symbols, how=LAYOUTS | st.none())
def test_a_record_of_another_session_or_pair_is_bad_naming_them(
    obj: Fill | Order, other_session: str, other_symbol: str, how: str | None
) -> None:
    kind = kind_of(obj)
    raw = kind.to_json(obj)
    raw = raw if how is None else non_canonical(raw, how)
    asked = [(other_session, obj.symbol), (obj.session_id, other_symbol)]
    for session_id, symbol in asked:
        result = one(kind, raw, session_id, symbol)
        if (session_id, symbol) == (obj.session_id, obj.symbol):
            assert len(result.items) == 1
            continue
        assert result.items == []
        (bad,) = result.bad
        assert f"{obj.session_id}/{obj.symbol}" in bad.reason
        assert (bad.key, bad.raw) == (f"{kind.key}#f", raw)


# 5. Tabs, newlines, carriage returns and backslashes are escaped.

SPECIAL = ["a\tb\nc\rd\\e", "\\N", "\\", "\t", "\n\r", "\\t", "end\\"]
# Text PostgreSQL can store: no NUL, no lone surrogate (those are bad, tested above).
storable = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"))


@FAST
@given(name=storable)
@example(name="")
def test_a_field_name_is_escaped_so_the_last_column_reads_back_as_the_record_key(
    name: str,
) -> None:
    for special in SPECIAL:
        _check_name(special)
    _check_name(name)


def _check_name(name: str) -> None:
    fill = Fill(
        "s1", "o1", "BTC/USD", Side.BUY, D("1"), D("1"), D("0"), datetime(2026, 1, 1, tzinfo=UTC)
    )
    for raw in (codec.fill_to_json(fill), non_canonical(codec.fill_to_json(fill), "indent")):
        (line,) = one(FILL, raw, "s1", "BTC/USD", name).items
        assert read_line(line, FILL_LINE_COLUMNS)["redis_key"] == f"{FILL.key}#{name}"


@FAST
@given(client_order_id=storable)
@example(client_order_id="a\tb\nc\rd\\e")
@example(client_order_id="\\N")
@example(client_order_id="\\")
def test_a_client_order_id_with_special_characters_is_escaped_and_reads_back(
    client_order_id: str,
) -> None:
    order = Order(
        "s1", "o1", "BTC/USD", Side.SELL, D("2.5"), D("0.1"), datetime(2026, 1, 1, tzinfo=UTC),
        client_order_id=client_order_id,
    )  # fmt: skip
    raw = codec.order_to_json(order)
    if not re.fullmatch(ORDER_ID_PATTERN, client_order_id):
        assert ORDERS.pattern.fullmatch(raw) is None  # only safe ids take the fast path
    result = one(ORDER, raw, "s1", "BTC/USD")
    assert result.bad == []
    (line,) = result.items
    assert read_line(line, ORDER_LINE_COLUMNS)["client_order_id"] == client_order_id
    assert_line_holds(line, order, f"{ORDER.key}#f")
