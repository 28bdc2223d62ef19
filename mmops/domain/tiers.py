"""Markup tiers: how far above break-even a take-profit asks, by the position's age.

A young position asks a full markup; as it ages the markup decays so that stale inventory is
offered closer to break-even and finally at it. The table maps a minimum age in minutes to a
markup fraction (``Decimal("0.01")`` is 1%); the largest key ≤ the age applies.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import pairwise
from types import MappingProxyType

from mmops.domain.models import check_symbol


@dataclass(frozen=True, slots=True)
class TierTable:
    """A validated tier table; build it with :meth:`parse`.

    Rules (checked on construction, ValueError otherwise): at least one tier; a tier at 0
    minutes so every age has a markup; ages are distinct non-negative ints; markups are finite
    Decimal fractions below 1 (1 would be 100%: almost surely a percent typed as a fraction);
    markups never rise with age (the point of tiers is decay); and no markup is negative
    unless ``allow_loss`` says selling below break-even is intended.
    """

    minutes: tuple[int, ...]
    markups: tuple[Decimal, ...]
    allow_loss: bool = False

    def __post_init__(self) -> None:
        _check_minutes(self.minutes)
        if len(self.markups) != len(self.minutes):
            raise ValueError("tier table: one markup per tier is required")
        _check_markups(self.minutes, self.markups, self.allow_loss)

    @classmethod
    def parse(cls, table: Mapping[int, Decimal], *, allow_loss: bool = False) -> TierTable:
        """Build a table from ``{minimum age in minutes: markup fraction}``.

        Raises ValueError naming the offending tier when the table breaks a rule above.
        """
        for minutes in table:
            if not isinstance(minutes, int) or isinstance(minutes, bool):
                raise ValueError(f"tier table: age {minutes!r} must be an int of minutes")
        items = sorted(table.items())
        return cls(tuple(k for k, _ in items), tuple(v for _, v in items), allow_loss)

    def markup_at(self, age_minutes: int) -> tuple[int, Decimal]:
        """The tier (its minimum age) and markup that apply at ``age_minutes``.

        Raises ValueError for a negative age.
        """
        if age_minutes < 0:
            raise ValueError(f"age must be >= 0 minutes, got {age_minutes}")
        index = bisect_right(self.minutes, age_minutes) - 1
        return self.minutes[index], self.markups[index]

    def as_dict(self) -> dict[int, Decimal]:
        return dict(zip(self.minutes, self.markups, strict=True))


def _check_minutes(minutes: tuple[int, ...]) -> None:
    if not minutes:
        raise ValueError("tier table is empty: at least the 0-minute tier is required")
    if minutes[0] != 0:
        raise ValueError("tier table has no 0-minute tier: ages below its first key have no markup")
    for earlier, later in pairwise(minutes):
        if later <= earlier:
            raise ValueError(f"tier table: ages must be distinct and ascending, got {minutes}")


def _check_markups(
    minutes: tuple[int, ...], markups: tuple[Decimal, ...], allow_loss: bool
) -> None:
    for age, markup in zip(minutes, markups, strict=True):
        if not isinstance(markup, Decimal) or not markup.is_finite():
            raise ValueError(f"tier {age} min: markup must be a finite Decimal, got {markup!r}")
        if not -1 < markup < 1:
            raise ValueError(f"tier {age} min: markup {markup} is not a fraction (0.01 = 1%)")
        if markup < 0 and not allow_loss:
            raise ValueError(
                f"tier {age} min: negative markup {markup} sells below break-even; "
                "allow loss tiers explicitly to use it"
            )
    for i in range(1, len(markups)):
        if markups[i] > markups[i - 1]:
            raise ValueError(
                f"tier {minutes[i]} min: markup {markups[i]} rises above tier "
                f"{minutes[i - 1]} min ({markups[i - 1]}); markups must not rise with age"
            )


DEFAULT_TIERS = TierTable.parse(
    {
        0: Decimal("0.01"),
        60: Decimal("0.006"),
        240: Decimal("0.0035"),
        720: Decimal("0.0015"),
        1440: Decimal("0"),
    }
)


@dataclass(frozen=True, slots=True)
class TierPolicy:
    """A default tier table with per-pair overrides (e.g. a thinner markup on BTC/USD).

    Raises InvalidIdentifier if an override is keyed by something that is not a pair symbol.
    """

    default: TierTable = DEFAULT_TIERS
    per_pair: Mapping[str, TierTable] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for symbol in self.per_pair:
            check_symbol(symbol)
        object.__setattr__(self, "per_pair", MappingProxyType(dict(self.per_pair)))

    def for_pair(self, symbol: str) -> TierTable:
        return self.per_pair.get(symbol, self.default)
