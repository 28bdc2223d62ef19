"""docs/TAKE_PROFIT.md's worked examples are run against the code: the page cannot drift."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, time
from decimal import Decimal
from pathlib import Path

import pytest

from mmops.domain.allocation import allocate
from mmops.domain.ids import client_order_id
from mmops.domain.models import Balance, Market, Position, Ticker
from mmops.domain.pricing import Dust, TakeProfitQuote, price_take_profit
from mmops.domain.rounding import round_amount_down, round_price_up
from mmops.domain.tiers import DEFAULT_TIERS

DOC = Path(__file__).resolve().parents[2] / "docs" / "TAKE_PROFIT.md"
TEXT = DOC.read_text(encoding="utf-8")
DAY = datetime(2025, 1, 1, tzinfo=UTC)
FIELD = re.compile(r"\w+=\S+")


@dataclass(frozen=True)
class Line:
    kind: str
    words: list[str]
    fields: dict[str, str]


def blocks(language: str) -> list[tuple[str, list[Line]]]:
    """Each fenced block of ``language``: its ``#`` title and its parsed lines."""
    found = []
    for body in re.findall(rf"^```{language}\n(.*?)^```", TEXT, flags=re.M | re.S):
        title, lines = "", []
        for raw in body.splitlines():
            if raw.startswith("#"):
                title = raw.lstrip("# ").strip()
            elif raw.strip():
                kind, *tokens = raw.split()
                words = [t for t in tokens if not FIELD.fullmatch(t)]
                fields = dict(t.split("=", 1) for t in tokens if FIELD.fullmatch(t))
                lines.append(Line(kind, words, fields))
        found.append((title or body.splitlines()[0], lines))
    return found


def market_of(line: Line) -> Market:
    symbol = line.words[0]
    base, quote = symbol.split("/")
    d = {k: Decimal(v) for k, v in line.fields.items()}
    return Market(
        symbol, base, quote, d["tick"], d["lot"], d["min_amount"], d["min_cost"],
        d["maker_fee"], d["maker_fee"],
    )  # fmt: skip


def check(actual: object, shown: str, what: str) -> None:
    """Exact unless the page writes ``≈x``: then equal to the places shown."""
    if shown in ("yes", "no"):
        assert actual is (shown == "yes"), what
    elif shown.startswith("≈"):
        expected = Decimal(shown[1:])
        assert isinstance(actual, Decimal), what
        assert actual.quantize(expected) == expected, f"{what}: {actual} is not {shown}"
    else:
        assert actual == Decimal(shown), f"{what}: {actual} != {shown}"


TP_EXAMPLES = blocks("tp-example")
ALLOC_EXAMPLES = blocks("alloc-example")


def test_the_page_has_the_examples_the_issue_asks_for() -> None:
    titles = " | ".join(title for title, _ in TP_EXAMPLES)
    assert len(TP_EXAMPLES) >= 8, titles
    reasons = {line.fields.get("dust") for _, lines in TP_EXAMPLES for line in lines}
    assert {"min_amount", "min_cost", "zero_amount"} <= reasons
    crossed = {line.fields.get("crossed") for _, lines in TP_EXAMPLES for line in lines}
    assert "yes" in crossed
    assert len(ALLOC_EXAMPLES) >= 2
    assert blocks("rounding-example") and blocks("id-example")


def test_the_tier_table_on_the_page_is_the_default() -> None:
    section = TEXT.split("<!-- tiers:begin -->")[1].split("<!-- tiers:end -->")[0]
    rows = re.findall(r"^\|\s*(\d+)\s*\|\s*([\d.]+)%\s*\|$", section, flags=re.M)
    assert {int(m): Decimal(p) / 100 for m, p in rows} == DEFAULT_TIERS.as_dict()


@pytest.mark.parametrize(("title", "lines"), TP_EXAMPLES, ids=[t for t, _ in TP_EXAMPLES])
def test_worked_take_profit_example(title: str, lines: list[Line]) -> None:
    by_kind: dict[str, Line] = {line.kind: line for line in lines if line.kind != "result"}
    expected: dict[str, str] = {}
    for line in lines:
        if line.kind == "result":
            expected.update(line.fields)
    market = market_of(by_kind["market"])
    p = by_kind["position"].fields
    assert set(p) <= {"filled", "cost", "fees", "covered", "age_minutes"}, f"{title}: {p}"
    filled, cost, fees, covered = (
        Decimal(p.get(k, "0")) for k in ("filled", "cost", "fees", "covered")
    )
    position = Position("S1", "P1", market.symbol, DAY, filled, cost, fees, covered)
    t = by_kind["ticker"].fields
    ticker = Ticker(market.symbol, Decimal(t["bid"]), Decimal(t["ask"]), DAY)
    age = int(by_kind["position"].fields["age_minutes"])

    result = price_take_profit(position, age, market, ticker, DEFAULT_TIERS)

    reason = expected.pop("dust", None)
    if reason is None:
        assert isinstance(result, TakeProfitQuote), f"{title}: {result}"
    else:
        assert isinstance(result, Dust) and result.reason == reason, f"{title}: {result}"
    for name, shown in expected.items():
        check(getattr(result, name), shown, f"{title}: {name}")


@pytest.mark.parametrize(("title", "lines"), ALLOC_EXAMPLES, ids=[t for t, _ in ALLOC_EXAMPLES])
def test_worked_allocation_example(title: str, lines: list[Line]) -> None:
    markets = {m.symbol: m for m in (market_of(x) for x in lines if x.kind == "market")}
    balances, reserve, quotes = {}, {}, []
    for line in lines:
        if line.kind == "balance":
            asset, free = line.words[0], Decimal(line.fields["free"])
            balances[asset] = Balance(asset, free, Decimal(0), free)
            reserve[asset] = Decimal(line.fields["reserve"])
        elif line.kind == "quote":
            quotes.append(quote_of(line))
    expect = {line.kind: line.fields for line in lines}

    allocation = allocate(quotes, balances, markets, reserve)

    granted = {g.quote.position_id: g.amount for g in allocation.granted}
    missing = {s.quote.position_id: s.missing for s in allocation.insufficient}
    assert granted == {k: Decimal(v) for k, v in expect["granted"].items()}, title
    assert missing == {k: Decimal(v) for k, v in expect["missing"].items()}, title
    remaining = {k: Decimal(v) for k, v in expect["remaining"].items()}
    assert dict(allocation.remaining) == remaining, title


def quote_of(line: Line) -> TakeProfitQuote:
    position_id, symbol = line.words
    price, amount = Decimal(line.fields["price"]), Decimal(line.fields["amount"])
    opened = datetime.combine(DAY.date(), time.fromisoformat(line.fields["opened"]), UTC)
    return TakeProfitQuote(
        session_id="S1", position_id=position_id, symbol=symbol, opened_at=opened,
        age_minutes=0, tier_minutes=0, markup=Decimal(0), basis=price, break_even=price,
        target=price, crossed=False, price=price, uncovered=amount, amount=amount,
    )  # fmt: skip


def test_worked_rounding_examples() -> None:
    (_, lines), *_ = blocks("rounding-example")
    for line in lines:
        value, arrow, result = line.words
        assert arrow == "=>"
        if line.kind == "price_up":
            rounded = round_price_up(Decimal(value), Decimal(line.fields["tick"]))
        else:
            rounded = round_amount_down(Decimal(value), Decimal(line.fields["lot"]))
        assert rounded == Decimal(result), f"{line.kind} {value} -> {rounded}, page says {result}"


def test_client_order_ids_on_the_page_are_what_the_code_computes() -> None:
    (_, lines), *_ = blocks("id-example")
    assert len(lines) >= 2
    for line in lines:
        f = line.fields
        computed = client_order_id(f["session"], f["position"], int(f["generation"]))
        assert computed == line.words[-1]
