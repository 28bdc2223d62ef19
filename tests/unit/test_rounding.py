"""Sell prices round up to the tick, buy prices down to it, amounts down to the lot, exactly,
on any grid."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mmops.domain.rounding import (
    is_multiple,
    round_amount_down,
    round_price_down,
    round_price_up,
)

D = Decimal

steps = st.builds(
    lambda mantissa, exponent: D(mantissa).scaleb(exponent),
    st.sampled_from([1, 2, 5, 25]),
    st.integers(min_value=-10, max_value=1),
)
values = st.builds(
    lambda units, exponent: D(units).scaleb(exponent),
    st.integers(min_value=0, max_value=10**12),
    st.integers(min_value=-12, max_value=0),
)


@pytest.mark.parametrize(
    ("price", "tick", "expected"),
    [
        ("60517.84060150375939849624061", "0.1", "60517.9"),  # BTC/USD
        ("60517.9", "0.1", "60517.9"),  # already on the tick: unchanged
        ("60517.90000000001", "0.1", "60518.0"),  # a hair above: the next tick
        ("0.5329180403007518796992481204", "0.00001", "0.53292"),  # XRP/USD
        ("0.53292", "0.00001", "0.53292"),
        ("100.01", "0.25", "100.25"),
        ("101.3", "5", "105"),
        ("0", "0.1", "0"),
    ],
)
def test_price_rounds_up_to_the_next_multiple_of_the_tick(
    price: str, tick: str, expected: str
) -> None:
    assert round_price_up(D(price), D(tick)) == D(expected)


@pytest.mark.parametrize(
    ("price", "tick", "expected"),
    [
        ("60517.84060150375939849624061", "0.1", "60517.8"),  # BTC/USD
        ("60517.9", "0.1", "60517.9"),  # already on the tick: unchanged
        ("60517.89999999999", "0.1", "60517.8"),  # a hair below: the tick under it
        ("0.5329180403007518796992481204", "0.00001", "0.53291"),  # XRP/USD
        ("100.24", "0.25", "100.00"),
        ("104.9", "5", "100"),
        ("0.04", "0.1", "0.0"),
    ],
)
def test_buy_price_rounds_down_to_the_previous_multiple_of_the_tick(
    price: str, tick: str, expected: str
) -> None:
    assert round_price_down(D(price), D(tick)) == D(expected)


@pytest.mark.parametrize(
    ("amount", "lot", "expected"),
    [
        ("0.0099999999", "0.00000001", "0.00999999"),
        ("0.01", "0.00000001", "0.01"),
        ("250.123456789", "0.00000001", "250.12345678"),
        ("7.9", "0.5", "7.5"),
        ("12", "5", "10"),
        ("0.000000005", "0.00000001", "0"),
    ],
)
def test_amount_rounds_down_to_the_previous_multiple_of_the_lot(
    amount: str, lot: str, expected: str
) -> None:
    assert round_amount_down(D(amount), D(lot)) == D(expected)


def test_a_rounded_price_is_written_with_the_ticks_decimal_places() -> None:
    assert str(round_price_up(D("100.05"), D("0.1"))) == "100.1"
    assert str(round_price_up(D("60000"), D("0.1"))) == "60000.0"
    assert str(round_amount_down(D("0.01"), D("0.00000001"))) == "0.01000000"


@pytest.mark.parametrize("bad", [D("-0.1"), D("NaN"), D("Infinity")])
def test_a_negative_or_non_finite_value_is_refused(bad: Decimal) -> None:
    with pytest.raises(ValueError, match="finite, non-negative"):
        round_price_up(bad, D("0.1"))
    with pytest.raises(ValueError, match="finite, non-negative"):
        round_amount_down(bad, D("0.1"))
    with pytest.raises(ValueError, match="finite, non-negative"):
        round_price_down(bad, D("0.1"))


@pytest.mark.parametrize("bad", [D(0), D("-0.1"), D("NaN")])
def test_a_step_that_is_not_positive_is_refused(bad: Decimal) -> None:
    with pytest.raises(ValueError, match="step must be"):
        round_price_up(D(1), bad)


def test_a_value_too_precise_to_round_exactly_is_refused_not_guessed() -> None:
    with pytest.raises(ValueError, match="exactly"):
        round_price_up(D("1E+70"), D("1E-10"))


@given(values, steps)
def test_price_up_is_the_smallest_multiple_of_the_tick_not_below_the_price(
    price: Decimal, tick: Decimal
) -> None:
    rounded = round_price_up(price, tick)
    assert is_multiple(rounded, tick)
    assert price <= rounded < price + tick
    assert round_price_up(rounded, tick) == rounded


@given(values, steps)
def test_price_down_is_the_largest_multiple_of_the_tick_not_above_the_price(
    price: Decimal, tick: Decimal
) -> None:
    rounded = round_price_down(price, tick)
    assert is_multiple(rounded, tick)
    assert price - tick < rounded <= price
    assert round_price_down(rounded, tick) == rounded
    assert str(rounded) == str(round_amount_down(price, tick))  # the same grid, the same digits


@given(values, steps)
def test_amount_down_is_the_largest_multiple_of_the_lot_not_above_the_amount(
    amount: Decimal, lot: Decimal
) -> None:
    rounded = round_amount_down(amount, lot)
    assert is_multiple(rounded, lot)
    assert amount - lot < rounded <= amount
    assert round_amount_down(rounded, lot) == rounded


# -- the fixed-context snap gives what the localcontext() one gave -------------------------


def _reference_snap(name: str, value: Decimal, step: Decimal, *, up: bool) -> Decimal:
    """``_snap`` as it was before it used one fixed context (a ``localcontext()`` per call)."""
    from decimal import Inexact, InvalidOperation, localcontext

    if not isinstance(value, Decimal) or not value.is_finite() or value < 0:
        raise ValueError(f"{name} must be a finite, non-negative Decimal, got {value!r}")
    if not isinstance(step, Decimal) or not step.is_finite() or step <= 0:
        raise ValueError(f"step must be a finite, positive Decimal, got {step!r}")
    places = Decimal(1).scaleb(min(int(step.as_tuple().exponent), 0))
    with localcontext() as ctx:
        ctx.prec = 60
        ctx.traps[Inexact] = True
        try:
            remainder = value % step
            snapped = value - remainder
            if up and remainder:
                snapped += step
            return snapped.quantize(places)
        except (Inexact, InvalidOperation) as e:
            raise ValueError(f"cannot round {name} {value} to step {step} exactly") from e


def _outcome(f: object, *args: object) -> tuple[str, str]:
    """What a call gives, as text: the result with its exponent, or the error and its words."""
    try:
        return ("ok", str(f(*args)))  # type: ignore[operator]
    except Exception as e:  # the error's type and words are the outcome
        return (type(e).__name__, str(e))


# Any digits (up to 70, past the 60 kept), any exponent (past the context's range too), both
# signs, the special values: every path, the errors included.
any_decimals = st.one_of(
    st.builds(
        lambda sign, digits, exponent: D((sign, tuple(int(c) for c in str(digits)), exponent)),
        st.sampled_from([0, 1]),
        st.integers(min_value=0, max_value=10**70),
        st.integers(min_value=-80, max_value=80) | st.integers(-1_000_040, 1_000_040),
    ),
    st.sampled_from([D("NaN"), D("Infinity"), D("-Infinity"), D("-0"), D("0E+5")]),
)


@given(any_decimals | values, any_decimals | steps, st.booleans())
def test_the_snap_gives_the_same_digits_and_errors_as_before(
    value: Decimal, step: Decimal, up: bool
) -> None:
    from mmops.domain import rounding

    for _ in range(2):  # the second time, with the step's places remembered
        assert _outcome(lambda v, s: rounding._snap("price", v, s, up=up), value, step) == (
            _outcome(lambda v, s: _reference_snap("price", v, s, up=up), value, step)
        )


def test_an_equal_step_written_otherwise_keeps_its_own_places() -> None:
    """The places are remembered per step object, never per value: 0.10 is not 0.1."""
    tenth, tenth_in_hundredths = D("0.1"), D("0.10")
    for _ in range(2):
        assert str(round_price_up(D("100.05"), tenth)) == "100.1"
        assert str(round_price_up(D("100.05"), tenth_in_hundredths)) == "100.10"
        assert str(round_amount_down(D("17"), D("1E+1"))) == "10"


def test_the_callers_context_plays_no_part() -> None:
    from decimal import ROUND_FLOOR, localcontext

    with localcontext() as ctx:
        ctx.prec, ctx.rounding = 3, ROUND_FLOOR
        assert str(round_price_up(D("60517.84060150375939849624061"), D("0.1"))) == "60517.9"
