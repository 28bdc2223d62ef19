"""Tier tables: the largest key <= age applies; validation refuses tables that cannot be meant."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mmops.domain.tiers import DEFAULT_TIERS, TierPolicy, TierTable
from mmops.errors import InvalidIdentifier

D = Decimal


@pytest.mark.parametrize(
    ("age", "tier", "markup"),
    [
        (0, 0, "0.01"),
        (59, 0, "0.01"),
        (60, 60, "0.006"),  # exactly on the boundary: the new tier applies
        (61, 60, "0.006"),
        (239, 60, "0.006"),
        (240, 240, "0.0035"),
        (720, 720, "0.0015"),
        (1439, 720, "0.0015"),
        (1440, 1440, "0"),
        (10**7, 1440, "0"),
    ],
)
def test_the_largest_tier_key_not_above_the_age_applies(age: int, tier: int, markup: str) -> None:
    assert DEFAULT_TIERS.markup_at(age) == (tier, D(markup))


def test_the_default_table_is_the_one_in_the_issue() -> None:
    assert DEFAULT_TIERS.as_dict() == {
        0: D("0.01"),
        60: D("0.006"),
        240: D("0.0035"),
        720: D("0.0015"),
        1440: D("0"),
    }


def test_a_table_is_sorted_by_age_whatever_order_it_is_given_in() -> None:
    table = TierTable.parse({120: D("0.002"), 0: D("0.01"), 30: D("0.005")})
    assert table.minutes == (0, 30, 120)
    assert table.markup_at(45) == (30, D("0.005"))


def test_a_negative_age_has_no_markup() -> None:
    with pytest.raises(ValueError, match="age must be >= 0"):
        DEFAULT_TIERS.markup_at(-1)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({}, "empty"),
        ({60: D("0.01")}, "no 0-minute tier"),
        ({0: D("0.01"), 60: D("-0.001")}, "negative markup"),
        ({0: D("0.001"), 60: D("0.01")}, "must not rise with age"),
        ({0: D("1")}, "not a fraction"),
        ({0: D("NaN")}, "finite Decimal"),
        ({0: 0.01}, "finite Decimal"),
        ({0: D("0.01"), -5: D("0.01")}, "no 0-minute tier"),
        ({"0": D("0.01")}, "must be an int"),
        ({False: D("0.01")}, "must be an int"),
    ],
)
def test_parse_refuses_a_table_that_cannot_be_meant(
    table: dict[object, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        TierTable.parse(table)  # type: ignore[arg-type]


def test_negative_markups_are_accepted_only_when_loss_tiers_are_allowed() -> None:
    table = TierTable.parse({0: D("0.01"), 2880: D("-0.002")}, allow_loss=True)
    assert table.markup_at(3000) == (2880, D("-0.002"))


def test_a_policy_uses_the_pairs_table_or_else_the_default() -> None:
    thin = TierTable.parse({0: D("0.002"), 30: D("0")})
    policy = TierPolicy(per_pair={"BTC/USD": thin})
    assert policy.for_pair("BTC/USD") is thin
    assert policy.for_pair("ETH/USD") is DEFAULT_TIERS


def test_a_policy_refuses_an_override_that_is_not_a_pair() -> None:
    with pytest.raises(InvalidIdentifier):
        TierPolicy(per_pair={"btc-usd": DEFAULT_TIERS})


def test_a_policys_overrides_cannot_be_changed_after_construction() -> None:
    overrides = {"BTC/USD": DEFAULT_TIERS}
    policy = TierPolicy(per_pair=overrides)
    overrides["ETH/USD"] = DEFAULT_TIERS
    assert "ETH/USD" not in policy.per_pair


markups = st.builds(lambda n: D(n).scaleb(-4), st.integers(min_value=-200, max_value=9999))
any_tables = st.dictionaries(st.integers(min_value=-5, max_value=5000), markups, max_size=6)


@st.composite
def decaying_tables(draw: st.DrawFn) -> dict[int, Decimal]:
    ages = draw(st.lists(st.integers(min_value=1, max_value=5000), unique=True, max_size=5))
    fractions = st.builds(lambda n: D(n).scaleb(-4), st.integers(min_value=0, max_value=9999))
    values = draw(st.lists(fractions, min_size=len(ages) + 1, max_size=len(ages) + 1))
    return dict(zip([0, *sorted(ages)], sorted(values, reverse=True), strict=True))


@given(decaying_tables(), st.integers(min_value=0, max_value=6000), st.integers(0, 6000))
def test_markup_never_rises_with_age_and_comes_from_the_largest_key_not_above_it(
    table: dict[int, Decimal], age: int, older_by: int
) -> None:
    tiers = TierTable.parse(table)
    tier, markup = tiers.markup_at(age)
    assert tier <= age and table[tier] == markup
    assert all(key <= tier or key > age for key in table)
    assert tiers.markup_at(age + older_by)[1] <= markup


@given(any_tables, st.booleans())
def test_parse_either_refuses_a_table_or_returns_one_that_decays(
    table: dict[int, Decimal], allow_loss: bool
) -> None:
    try:
        tiers = TierTable.parse(table, allow_loss=allow_loss)
    except ValueError:
        return
    assert tiers.minutes[0] == 0
    assert list(tiers.markups) == sorted(tiers.markups, reverse=True)
    assert allow_loss or min(tiers.markups) >= 0
