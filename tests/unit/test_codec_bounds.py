"""One bound for every decimal read from Redis: zero, or a magnitude within 40 places either side
of the point. A record beyond it, or a position contribution that would shrink its position, is
a BadRecordError with its key and reason, never an arithmetic exception; and the domain's P&L
refuses what it could not compute instead of overflowing."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mmops.adapters.redis import codec
from mmops.domain.bounds import DIGITS, within_bounds
from mmops.domain.models import Fill, Side
from mmops.domain.pnl import drawdown, equity, fifo_pnl, refusal
from mmops.errors import BadRecordError

D = Decimal
T0 = datetime(2026, 2, 1, tzinfo=UTC)
KEY = "position:{s1}:b1"


@pytest.mark.parametrize(
    "text",
    ["1E+999999", "-1E+999999", "1E+40", "9" * 41, "1E-41", "0." + "0" * 40 + "1", "1E-999999"],
)
def test_a_decimal_beyond_40_places_either_side_of_the_point_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="more than 40 digits"):
        codec.dec(text)


@pytest.mark.parametrize(
    "text",
    ["9" * 40, "9" * 40 + "." + "9" * 40, "1E+39", "1E-40", "0.5", "-3.25", "0E+999999", "-0"],
)
def test_a_decimal_within_the_bound_reads_exactly(text: str) -> None:
    assert str(codec.dec(text)) == str(D(text))


def test_zero_is_within_the_bound_whatever_its_exponent() -> None:
    assert within_bounds(D("0E+999999")) and within_bounds(D("0E-999999"))


BOUNDED = st.decimals(
    min_value=D(10) ** -DIGITS, max_value=D(10) ** DIGITS - 1, allow_nan=False, places=None
)


@given(a=BOUNDED, b=BOUNDED, c=BOUNDED)
def test_products_and_quotients_of_bounded_amounts_never_overflow(a: D, b: D, c: D) -> None:
    assert (a * b * c).is_finite() and (a * b / c).is_finite()


def position(**contributions: str) -> dict[str, str]:
    return {"symbol": "BTC/USD", "opened_at": T0.isoformat(), "v": "1", **contributions}


def read(fields: dict[str, str]) -> Any:
    return codec.decode(KEY, fields, lambda f: codec.position_from_fields("s1", "b1", f))


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("f:t:x", "1E+999999|150|0", "40 digits"),  # one product of it overflowed
        ("f:t:x", "1|1E+999999|0", "40 digits"),
        ("f:t:x", "1|150|1E+999999", "40 digits"),
        ("f:t:x", "1E-999999|150|0", "40 digits"),
        ("f:t:neg", "-0.5|150|0", "must be > 0"),  # halved the position's coverage
        ("f:t:neg", "0|150|0", "must be > 0"),
        ("f:t:neg", "0.5|-150|0", "must be > 0"),
        ("f:t:neg", "0.5|150|-1", "fee >= 0"),
        ("tp:o9", "-0.5", "must be >= 0"),  # would uncover (and sell again) what is sold
        ("x:e1", "-0.5", "must be >= 0"),
        ("tp:o9", "1E+999999", "40 digits"),
    ],
)
def test_a_hostile_contribution_makes_the_position_a_bad_record_with_key_and_reason(
    field: str, value: str, reason: str
) -> None:
    with pytest.raises(BadRecordError) as caught:
        read(position(**{"f:t:a": "1|150|0.1", field: value}))
    assert caught.value.key == KEY and reason in caught.value.reason


def test_a_position_of_good_contributions_still_reads_exactly() -> None:
    p = read(position(**{"f:t:a": "1|150|0.1", "f:t:b": "0.5|152|0", "tp:o1": "1", "x:e": "0"}))
    assert (p.filled, p.cost, p.fees, p.covered, p.closed) == (
        D("1.5"), D(226), D("0.1"), D(1), D(0)
    )  # fmt: skip


def fill_json(**changes: str) -> str:
    record = {
        "session_id": "s1", "order_id": "b1", "symbol": "BTC/USD", "side": "buy",
        "price": "150", "quantity": "1", "fee": "0", "timestamp": T0.isoformat(),
        "trade_id": "t1",
    }  # fmt: skip
    return json.dumps({**record, **changes})


@pytest.mark.parametrize("field", ["price", "quantity", "fee"])
def test_a_fill_with_an_amount_beyond_the_bound_is_a_bad_record(field: str) -> None:
    raw = fill_json(**{field: "1E+999999"})
    with pytest.raises(BadRecordError) as caught:
        codec.decode("fills:{s1}:BTC/USD#t:t1", raw, codec.fill_from_json)
    assert caught.value.key == "fills:{s1}:BTC/USD#t:t1" and "40 digits" in caught.value.reason


def test_migration_still_refuses_a_huge_amount_with_the_40_digit_reason() -> None:
    result = codec.lines(codec.FILLS, "fills:{s1}:BTC/USD", "s1", "BTC/USD",
                         {"t:t1": fill_json(quantity="1E+999999")})  # fmt: skip
    [bad] = result.bad
    assert result.items == [] and "more than 40 digits" in bad.reason


def a_fill(n: int, qty: str = "1", symbol: str = "BTC/USD") -> Fill:
    at = T0 + timedelta(seconds=n)
    return Fill("s1", f"o{n}", symbol, Side.BUY, D(150), D(qty), D(0), at, f"t{n}")


def test_the_pnl_refuses_a_fill_beyond_the_bound_instead_of_overflowing() -> None:
    huge = a_fill(2, qty="1E+999999")  # a Fill admits it; the P&L must not multiply it
    assert refusal("s1", "BTC/USD", huge) is not None
    with pytest.raises(ValueError, match="40 digits"):
        fifo_pnl("s1", "BTC/USD", [a_fill(1), huge])


def test_the_pnl_names_a_fill_of_another_pair_as_refused() -> None:
    stray = a_fill(2, symbol="ETH/USD")
    assert "ETH/USD" in (refusal("s1", "BTC/USD", stray) or "")
    assert refusal("s1", "BTC/USD", a_fill(1)) is None


def test_an_equity_or_drawdown_beyond_the_bound_is_refused_not_recorded() -> None:
    pnl = fifo_pnl("s1", "BTC/USD", [a_fill(1, qty="9" * 39)])
    with pytest.raises(ValueError, match="equity"):
        equity(D(1), [pnl], {"BTC/USD": D("9" * 39)})  # about 10^78: would not read back
    with pytest.raises(ValueError, match="drawdown"):
        drawdown(D("1E-40"), D("-1E+39"))
