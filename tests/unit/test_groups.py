"""Pair groups: a big session's pairs shared out in groups that share no base asset."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import given

from mmops.domain.groups import base_asset, group_names, pair_groups

BASES = ["BTC", "ETH", "SOL", "XRP", "ADA", "DOT", "LINK", "LTC"]
QUOTES = ["USD", "EUR", "GBP", "USDT"]
pairs_st = st.lists(
    st.builds(lambda b, q: f"{b}/{q}", st.sampled_from(BASES), st.sampled_from(QUOTES)),
    max_size=40,
)


@given(pairs=pairs_st, size=st.integers(min_value=0, max_value=12))
def test_groups_hold_every_pair_once_and_no_base_in_two_groups(pairs: list[str], size: int) -> None:
    groups = pair_groups(pairs, size)

    flat = [p for g in groups for p in g]
    assert sorted(flat) == sorted(set(pairs))
    owner = {}
    for i, group in enumerate(groups):
        for pair in group:
            assert owner.setdefault(base_asset(pair), i) == i
    for group in groups:  # over the size only when one base alone has more pairs
        assert len(group) <= size or len({base_asset(p) for p in group}) == 1 or len(groups) == 1


@given(pairs=pairs_st, size=st.integers(min_value=1, max_value=12))
def test_every_worker_computes_the_same_groups_whatever_the_order(
    pairs: list[str], size: int
) -> None:
    """The same groups, named alike (an unsplit session keeps its own pair order)."""
    forward, backward = pair_groups(pairs, size), pair_groups(list(reversed(pairs)), size)
    assert [sorted(g) for g in forward] == [sorted(g) for g in backward]


def test_a_session_that_fits_is_one_part_and_zero_never_splits() -> None:
    pairs = ["BTC/USD", "ETH/USD", "SOL/USD"]
    assert pair_groups(pairs, 3) == (tuple(pairs),)
    assert pair_groups(pairs, 0) == (tuple(pairs),)
    assert group_names(pair_groups(pairs, 3)) == ()
    assert pair_groups([], 2) == ()


def test_pairs_of_one_base_stay_together_even_past_the_size() -> None:
    groups = pair_groups(["BTC/USD", "BTC/EUR", "BTC/GBP", "ETH/USD", "SOL/USD"], 2)
    assert groups == (("BTC/EUR", "BTC/GBP", "BTC/USD"), ("ETH/USD", "SOL/USD"))
    assert group_names(groups) == ("g0", "g1")
