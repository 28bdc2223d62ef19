"""Exact rounding of prices and amounts to a market's tick and lot.

A sell limit price rounds **up** (never below break-even), a buy limit price rounds **down**
(never more than the buyer meant to pay) and an amount rounds **down** (never more than the
position holds). The arithmetic uses the Decimal remainder, which is exact for
any step — 0.1, 0.00001, 0.25 or 5 — unlike ``quantize``, which only knows powers of ten.
"""

from __future__ import annotations

from decimal import Context, Decimal, Inexact, InvalidOperation

# Enough digits for any price or amount a venue quotes; beyond this we refuse rather than guess.
_PRECISION = 60
# The context of every snap, built once (a ``localcontext()`` per call cost more than the
# arithmetic): the default context's settings and traps, 60 digits, and any inexact result
# trapped. Its operations are called as its methods, so the caller's context plays no part.
_EXACT = Context(prec=_PRECISION)
_EXACT.traps[Inexact] = True
_DEFAULT = Context()  # the default context's settings: where a step's places are computed
# The places of the steps seen lately, by identity: a market's tick and lot are the same
# objects on every call. Each entry keeps its step alive, so its id cannot be reused while
# the entry stands; an equal step written otherwise (0.10 for 0.1) has its own entry.
_PLACES: dict[int, tuple[Decimal, Decimal]] = {}
_PLACES_KEPT = 256


def round_price_up(price: Decimal, tick: Decimal) -> Decimal:
    """The smallest multiple of ``tick`` that is ≥ ``price``.

    Raises ValueError if ``price`` is negative or not finite, if ``tick`` is not positive, or if
    the result cannot be represented exactly in 60 digits.
    """
    return _snap("price", price, tick, up=True)


def round_price_down(price: Decimal, tick: Decimal) -> Decimal:
    """The largest multiple of ``tick`` that is ≤ ``price`` (a buy's limit price).

    Raises ValueError if ``price`` is negative or not finite, if ``tick`` is not positive, or if
    the result cannot be represented exactly in 60 digits.
    """
    return _snap("price", price, tick, up=False)


def round_amount_down(amount: Decimal, lot: Decimal) -> Decimal:
    """The largest multiple of ``lot`` that is ≤ ``amount``.

    Raises ValueError if ``amount`` is negative or not finite, if ``lot`` is not positive, or if
    the result cannot be represented exactly in 60 digits.
    """
    return _snap("amount", amount, lot, up=False)


def is_multiple(value: Decimal, step: Decimal) -> bool:
    """Whether ``value`` lies exactly on the grid of ``step`` (what a venue accepts).

    Raises ValueError on the same inputs as :func:`round_amount_down`.
    """
    return _snap("value", value, step, up=False) == value


def _snap(name: str, value: Decimal, step: Decimal, *, up: bool) -> Decimal:
    if not isinstance(value, Decimal) or not value.is_finite() or value < 0:
        raise ValueError(f"{name} must be a finite, non-negative Decimal, got {value!r}")
    if not isinstance(step, Decimal) or not step.is_finite() or step <= 0:
        raise ValueError(f"step must be a finite, positive Decimal, got {step!r}")
    ctx = _EXACT
    known = _PLACES.get(id(step))
    places = known[1] if known is not None and known[0] is step else _places(step)
    try:
        remainder = ctx.remainder(value, step)
        snapped = ctx.subtract(value, remainder)
        if up and remainder:
            snapped = ctx.add(snapped, step)
        return snapped.quantize(places, context=ctx)
    except (Inexact, InvalidOperation) as e:
        raise ValueError(f"cannot round {name} {value} to step {step} exactly") from e


def _places(step: Decimal) -> Decimal:
    """One unit in the step's last decimal place (1 for a whole step), remembered for the
    step: a result is written with the step's places, so 100.05 up on 0.1 reads 100.1, not
    100.10. Never raises (a step below the context's range gives zero places, which the
    quantize then refuses)."""
    places = Decimal(1).scaleb(min(int(step.as_tuple().exponent), 0), context=_DEFAULT)
    if len(_PLACES) >= _PLACES_KEPT:
        _PLACES.clear()
    _PLACES[id(step)] = (step, places)
    return places
