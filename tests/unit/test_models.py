"""Domain models refuse what later steps could not handle."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mmops.domain import models
from mmops.domain.models import (
    ORDER_ID_PATTERN,
    SESSION_ID_PATTERN,
    SYMBOL_PATTERN,
    Fill,
    PendingTakeProfit,
    Position,
    Session,
    Side,
    check_amount,
    check_order_id,
    check_session_id,
    check_symbol,
)
from mmops.errors import InvalidIdentifier

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def fill(**kw: object) -> Fill:
    args: dict[str, object] = dict(
        session_id="s1",
        order_id="o1",
        symbol="BTC/USD",
        side=Side.BUY,
        price=Decimal("10"),
        quantity=Decimal("1"),
        fee=Decimal("0"),
        timestamp=T0,
    )
    args.update(kw)
    return Fill(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad",
    [
        {"price": Decimal("NaN")},
        {"price": Decimal("Infinity")},
        {"quantity": Decimal("-1")},
        {"quantity": Decimal("0")},
        {"fee": Decimal("-0.01")},
        {"price": 10.5},
        {"timestamp": datetime(2026, 1, 1)},
    ],
)
def test_fill_rejects_bad_numbers_and_naive_times(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        fill(**bad)


def test_fill_key_prefers_trade_id_and_normalises_numbers() -> None:
    assert fill(trade_id="T9").key == "t:T9"
    assert fill(quantity=Decimal("1.000")).key == fill(quantity=Decimal("1")).key
    assert fill(quantity=Decimal("2")).key != fill().key


@pytest.mark.parametrize("sid", ["a}b", "{x}", "a:b", "", " ", "x" * 65, "é"])
def test_session_ids_that_could_escape_a_key_are_refused(sid: str) -> None:
    with pytest.raises(InvalidIdentifier):
        check_session_id(sid)


@pytest.mark.parametrize("sym", ["BTCUSD", "btc/usd", "BTC/USD'; DROP TABLE fills;--", "A/B/C"])
def test_malformed_symbols_are_refused(sym: str) -> None:
    with pytest.raises(InvalidIdentifier):
        check_symbol(sym)


def test_session_refuses_duplicate_pairs() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        Session("s1", ("BTC/USD", "BTC/USD"), T0)


def test_position_uncovered_is_filled_minus_covered_minus_closed() -> None:
    p = Position(
        "s1",
        "p1",
        "BTC/USD",
        T0,
        Decimal("1"),
        Decimal("10"),
        Decimal("0"),
        covered=Decimal("0.4"),
        closed=Decimal("0.1"),
    )
    assert p.uncovered == Decimal("0.5")
    over = Position(
        "s1", "p1", "BTC/USD", T0, Decimal("1"), Decimal("10"), Decimal("0"), covered=Decimal("2")
    )
    assert over.uncovered == 0


# -- remembered identifiers and the fast paths give what the plain checks gave -------------

_ID_RULES = [
    (check_session_id, SESSION_ID_PATTERN),
    (check_symbol, SYMBOL_PATTERN),
    (check_order_id, ORDER_ID_PATTERN),
]
id_texts = st.one_of(
    st.text(max_size=70),
    st.from_regex(SESSION_ID_PATTERN, fullmatch=True),
    st.from_regex(SYMBOL_PATTERN, fullmatch=True),
    st.from_regex(ORDER_ID_PATTERN, fullmatch=True),
)


@given(id_texts)
def test_an_identifier_passes_exactly_when_it_matches_its_rule_every_time(text: str) -> None:
    for check, pattern in _ID_RULES:
        for _ in range(2):  # the second time it may be remembered
            if re.fullmatch(pattern, text):
                assert check(text) is text
            else:
                with pytest.raises(InvalidIdentifier):
                    check(text)


class _Sneaky(str):
    """A str that compares equal to a remembered id but is not one."""

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = str.__hash__


@pytest.mark.parametrize(("check", "pattern"), _ID_RULES)
def test_only_exact_strings_are_taken_as_remembered(
    check: Callable[[str], str], pattern: str
) -> None:
    good = {"S-1": "S-1", "BTC/USD": "BTC/USD", "O-1": "O-1"}
    valid = next(v for v in good.values() if re.fullmatch(pattern, v))
    check(valid)
    with pytest.raises(InvalidIdentifier):
        check(_Sneaky("bad {id}"))
    for bad in (None, 1, b"S-1", ["S-1"]):
        with pytest.raises(InvalidIdentifier):
            check(bad)  # type: ignore[arg-type]


def test_remembered_identifiers_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "_KNOWN_KEPT", 3)
    monkeypatch.setattr(models, "_KNOWN_ORDER_IDS", set())
    for n in range(10):
        check_order_id(f"O-{n}")
        assert len(models._KNOWN_ORDER_IDS) <= 3


def _reference_check_amount(name: str, value: Decimal, *, positive: bool = False) -> Decimal:
    if not isinstance(value, Decimal) or not value.is_finite():
        raise ValueError(f"{name} must be a finite Decimal, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'}, got {value}")
    return value


def _outcome(f: Callable[[], object]) -> object:
    try:
        return ("ok", repr(f()))
    except Exception as e:  # the error is the outcome compared
        return (type(e).__name__, str(e))


amounts = st.decimals(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [Decimal("-0"), Decimal("0E+3"), Decimal("sNaN"), 1, 1.5, "1", None]
)


@given(amounts, st.booleans())
def test_check_amount_accepts_and_words_refusals_as_before(value: Decimal, positive: bool) -> None:
    assert _outcome(lambda: check_amount("x", value, positive=positive)) == _outcome(
        lambda: _reference_check_amount("x", value, positive=positive)
    )


small = st.decimals(min_value=0, max_value=10**6, places=None, allow_nan=False) | st.sampled_from(
    [Decimal("-0"), Decimal("1E+1"), Decimal("0E+3"), Decimal("0E-9")]
)


@given(small, small, small, st.lists(small, max_size=3))
def test_uncovered_is_the_same_figure_and_digits_as_before(
    filled: Decimal, covered: Decimal, closed: Decimal, pending: list[Decimal]
) -> None:
    p = Position(
        "s1", "p1", "BTC/USD", T0, filled, Decimal(0), Decimal(0), covered, closed,
        pending=tuple(PendingTakeProfit(i, f"c{i}", a) for i, a in enumerate(pending)),
    )  # fmt: skip
    pending_amount = sum(pending, Decimal(0))
    expected = max(Decimal(0), filled - covered - closed - pending_amount)
    assert (repr(p.uncovered), repr(p.pending_amount)) == (repr(expected), repr(pending_amount))
