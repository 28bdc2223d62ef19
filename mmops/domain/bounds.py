"""The magnitude every amount mmops reads or records stays within.

A ``Decimal`` string may carry any exponent: ``1E+999999`` is a valid, finite number, and one
product or quotient of two such values raises ``decimal.Overflow``. Every amount read from a
store is therefore held to one bound, the 40-digit rule migration applies before PostgreSQL:
zero, or a magnitude from 10⁻⁴⁰ up to (not including) 10⁴⁰, so its leading digit lies within
40 places either side of the point. The domain's arithmetic multiplies or divides a few such
amounts at a time, so no result comes near the exponent limit (about 10^999999) of the
default context; a figure computed from them that leaves the bound is refused before it is
recorded, so everything recorded reads back.
"""

from __future__ import annotations

from decimal import Decimal

DIGITS = 40  # places either side of the point that an amount's leading digit may lie within


def within_bounds(value: Decimal) -> bool:
    """True for zero (whatever its exponent) and for a finite ``value`` with 10⁻⁴⁰ ≤ |value|
    < 10⁴⁰. The exponent is checked, never the written-out digits."""
    if not value.is_finite():
        return False
    return value.is_zero() or -DIGITS <= value.adjusted() < DIGITS


def check_bounds(value: Decimal) -> Decimal:
    """Return ``value`` if :func:`within_bounds`, else raise ValueError."""
    if not within_bounds(value):
        raise ValueError(f"{value} has more than {DIGITS} digits before or after the point")
    return value
