"""Domain models refuse what later steps could not handle."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from mmops.domain.models import Fill, Position, Session, Side, check_session_id, check_symbol
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
