"""The parts a settlement run is cut into (docs/ARCHITECTURE.md, "Big sessions in parts").

A session with no more pairs than the group size is one part: the whole session under its
lock. A bigger one is split into groups of pairs that share no base asset
(``mmops.domain.groups``): each group is covered under a lock of its own, so several workers
settle one big session at once, and the session's part ``''`` does what needs all of it
(reconciliation, the stop-loss, the status) holding every one of its locks.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from enum import StrEnum

from mmops.domain.groups import group_names, pair_groups
from mmops.domain.models import Session
from mmops.domain.records import SessionLease, WorkItem
from mmops.ports import SessionLocks

# How long a part waits for its locks when it may: a split session's part '' for its groups'
# runs to end, a group for the part '' (and, claimed from a lease, a whole session for a quick
# run) — in all, the locks being taken at once, all or none.
PART_WAIT_S = 10.0


class Work(StrEnum):
    """What a part does under its locks."""

    FULL = "full"  # a whole session: reconcile, cover, check the stop-loss, write the status
    COVER = "cover"  # cover and reprice these pairs only: a group, or a quick run's pairs
    CHECK = "check"  # a split session's part '': reconcile, cover what that released, the
    # stop-loss and the status


@dataclass(frozen=True, slots=True)
class Part:
    session: Session  # narrowed to the pairs this part covers (all of them for FULL, CHECK)
    work: Work
    name: str = ""  # the lease's part: '' or g0, g1, ...
    scopes: tuple[str, ...] = ("",)  # the locks it holds (all or none)
    wait: float = 0.0  # seconds it may wait for them (0: a held lock skips the run)

    @property
    def whole(self) -> bool:
        """Reconciles, checks the stop-loss and writes the session's status."""
        return self.work is not Work.COVER

    def lock(self, locks: SessionLocks) -> AbstractAsyncContextManager[SessionLease]:
        return locks.hold_all(self.session.id, self.scopes, wait=self.wait)


class Parts:
    """Cuts sessions into parts for groups of at most ``group_pairs`` pairs (0: never)."""

    def __init__(self, group_pairs: int) -> None:
        self.group_pairs = group_pairs

    def groups(self, pairs: Sequence[str]) -> dict[str, tuple[str, ...]]:
        """The session's groups by lease part name (none when it is not split)."""
        groups = pair_groups(pairs, self.group_pairs)
        return dict(zip(group_names(groups), groups, strict=False))

    def full(self, session: Session) -> list[Part]:
        """A full run of the session, in one process: its groups, then its part ''."""
        groups = self.groups(session.pairs)
        if not groups:
            return [Part(session, Work.FULL)]
        return [
            *(_group(session, name, pairs, PART_WAIT_S) for name, pairs in groups.items()),
            _check(session, tuple(groups)),
        ]

    def quick(self, session: Session, pairs: Sequence[str]) -> list[Part]:
        """A quick run of ``pairs``: one part per group they fall in. It never waits: the
        trigger tries a held lock again, backing off."""
        wanted = set(pairs)
        groups = self.groups(session.pairs)
        if not groups:
            narrowed = _narrowed(session, pairs)
            return [Part(narrowed, Work.COVER)] if narrowed.pairs else []
        return [
            _group(session, name, [p for p in group if p in wanted], wait=0)
            for name, group in groups.items()
            if wanted.intersection(group)
        ]

    @staticmethod
    def claimed(session: Session, item: WorkItem) -> Part | None:
        """The part a lease names, as its row says (the groups were made by whichever worker
        discovered them, so all workers settle the same ones); None when none of its pairs
        is the session's any more. A claimed part waits for its locks."""
        if item.part == "":
            if item.groups:
                return _check(session, item.groups)
            return Part(session, Work.FULL, wait=PART_WAIT_S)
        pairs = [p for p in item.pairs if p in session.pairs]
        return _group(session, item.part, pairs, PART_WAIT_S) if pairs else None


def _group(session: Session, name: str, pairs: Sequence[str], wait: float) -> Part:
    return Part(_narrowed(session, pairs), Work.COVER, name=name, scopes=(name,), wait=wait)


def _check(session: Session, groups: Sequence[str]) -> Part:
    return Part(session, Work.CHECK, scopes=("", *groups), wait=PART_WAIT_S)


def _narrowed(session: Session, pairs: Sequence[str]) -> Session:
    wanted = set(pairs)
    return replace(session, pairs=tuple(p for p in session.pairs if p in wanted))
