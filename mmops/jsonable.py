"""Values as JSON carries them, one way for every output of mmops: Decimals as exact plain
decimal strings (never an exponent, never a float), dates and times as ISO 8601, enums as
their value."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any


def jsonable(value: Any) -> Any:
    """``value`` with every Decimal as a plain decimal string, every date and time as ISO 8601
    and every enum as its value, through dicts, lists and tuples; what ``json`` takes as is
    (str, int, bool, None, and finite floats: ages in seconds, never money) unchanged. Raises
    TypeError for anything else."""
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, Decimal):
        return _plain(value)
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Enum):
        return jsonable(value.value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    raise TypeError(f"not JSON for the dashboard: {type(value).__name__}")


def _plain(d: Decimal) -> str:
    """'0.00000001', never '1E-8'; a negative zero without its sign; NaN and infinities are
    refused (no JSON reader could take them as numbers)."""
    if not d.is_finite():
        raise TypeError(f"not a finite Decimal: {d}")
    text = format(d, "f")
    return text.lstrip("-") if d.is_zero() else text
