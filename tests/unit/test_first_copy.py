"""The first migration's checks in Python (``first_copy``): the order rows picked are those of
the plain rule (each Redis record once; an order id under two pairs kept under its first pair by
name, then its smallest key; every other record of it a stray), however the records arrive."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmops.adapters.postgres.first_copy import OrderPick
from mmops.domain.records import Stray

PAIRS = ["BTC/EUR", "BTC/USD", "ETH/USD"]
NULL = "\\N"


def line(order_id: str, pair: str, field: str) -> str:
    """A migration line of an order (``ORDER_LINE_COLUMNS``), keyed as the codec keys it."""
    return (f"{order_id}\ts1\t{pair}\tbuy\t1\t1\t0\topen\tentry\t\\N\t2026-01-01T00:00:00+00:00"
            f"\torders:{{s1}}:{pair}#{field}\n")  # fmt: skip


def reference(chunks: list[list[str]], pair_index: dict[str, int]) -> tuple[
    list[str], Counter[str], set[Stray]
]:  # fmt: skip
    """The rule written plainly."""
    records = {ln.rsplit("\t", 1)[1][:-1]: ln for chunk in chunks for ln in chunk}
    per_pair = Counter(ln.split("\t")[2] for ln in records.values())
    best: dict[str, tuple[str, str]] = {}
    for key, ln in records.items():
        order_id, pair = ln.split("\t")[0], ln.split("\t")[2]
        best[order_id] = min(best.get(order_id, (pair, key)), (pair, key))
    rows = sorted(
        records[key].rsplit("\t", 1)[0] + "\t" + str(pair_index.get(pair, NULL)) + "\n"
        for pair, key in best.values()
    )
    strays = set()
    for key, ln in records.items():
        order_id, _, pair, _ = ln.split("\t", 3)
        if best[order_id][1] != key:
            reason = f"order id {order_id} also recorded under {best[order_id][0]}"
            strays.add(Stray(pair, key, reason))
    return rows, per_pair, strays


records = st.lists(
    st.tuples(st.sampled_from(["o1", "o2", "o3", "o10"]), st.sampled_from(PAIRS),
              st.sampled_from(["o1", "o2", "x", "y", "o10"])),
    max_size=30,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(records=records, repeat=st.integers(0, 3))
def test_order_pick_keeps_what_the_plain_rule_keeps(
    records: list[tuple[str, str, str]], repeat: int
) -> None:
    """Chunks of one pair each, in any order, a record sometimes read twice (HSCAN may)."""
    chunks: list[list[str]] = []
    for order_id, pair, field in records:
        chunks.append([line(order_id, pair, field)] * (1 + repeat % 2))
    chunks += chunks[:repeat]  # some chunks read again
    pair_index = {"BTC/USD": 0, "ETH/USD": 1}  # BTC/EUR: a pair the session does not list
    pick = OrderPick()
    for chunk in chunks:
        pick.add(chunk)
    rows, per_pair, strays = pick.pick(pair_index)
    want_rows, want_pairs, want_strays = reference(chunks, pair_index)
    assert rows == want_rows
    assert +per_pair == want_pairs
    assert sorted(strays, key=repr) == sorted(want_strays, key=repr)
    assert len(strays) == len(set(strays))
    assert pick.order_ids == {row.split("\t")[0] for row in rows}
    last_read = {ln.rsplit("\t", 1)[1]: ln for chunk in chunks for ln in chunk}  # per key
    assert sorted(pick.lines) == sorted(last_read.values())


def test_order_pick_refuses_a_chunk_of_two_pairs() -> None:
    with pytest.raises(ValueError, match="another pair"):
        OrderPick().add([line("o1", "BTC/USD", "o1"), line("o2", "ETH/USD", "o2")])
