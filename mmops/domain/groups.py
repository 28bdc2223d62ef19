"""Pair groups: how a big session's pairs are shared out between settlement workers.

A take-profit sells its pair's base asset, so two pairs with one base (BTC/USD and BTC/EUR)
spend the same balance and reprice against the same holdings: they stay in one group. Pairs
of different bases share nothing a settlement run writes, so their groups can be settled by
different workers at the same time, each under its own lock.
"""

from __future__ import annotations

from collections.abc import Sequence


def base_asset(pair: str) -> str:
    """``BTC`` of ``BTC/USD`` (and of a ccxt derivative symbol such as ``BTC/USD:USD``)."""
    return pair.split("/", 1)[0]


def pair_groups(pairs: Sequence[str], max_pairs: int) -> tuple[tuple[str, ...], ...]:
    """The pairs in groups of at most ``max_pairs`` that share no base asset, or one group of
    them all when they fit (or ``max_pairs`` is 0: never split).

    Pairs of one base are never parted, so a base with more pairs than ``max_pairs`` makes a
    group of its own that is bigger. Packing is first-fit by decreasing size, ties by base
    name: the same pairs always give the same groups, on every worker.
    """
    ordered = tuple(dict.fromkeys(pairs))
    if max_pairs <= 0 or len(ordered) <= max_pairs:
        return (ordered,) if ordered else ()
    by_base: dict[str, list[str]] = {}
    for pair in ordered:
        by_base.setdefault(base_asset(pair), []).append(pair)
    bases = sorted(by_base.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    groups: list[list[str]] = []
    for _, members in bases:
        for group in groups:
            if len(group) + len(members) <= max_pairs:
                group.extend(members)
                break
        else:
            groups.append(list(members))
    return tuple(tuple(sorted(g)) for g in groups)


def group_names(groups: Sequence[Sequence[str]]) -> tuple[str, ...]:
    """Each group's lease part and lock scope: ``g0``, ``g1``, ... (empty for an unsplit
    session, whose one part is the whole session)."""
    return tuple(f"g{i}" for i in range(len(groups))) if len(groups) > 1 else ()


def lock_scopes(pairs: Sequence[str], max_pairs: int) -> tuple[str, ...]:
    """Every settlement lock of a session with these pairs: its own (``''``) and one per group
    when it is split. Whatever changes the whole session (``mmops reconcile``, a split
    session's stop-loss) holds them all."""
    return ("", *group_names(pair_groups(pairs, max_pairs)))
