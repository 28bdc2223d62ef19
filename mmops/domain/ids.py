"""Deterministic client order ids for take-profits.

The id of a take-profit is a function of (session, position, generation), so after an
ambiguous failure (timeout, reset) the same id is computed again and looked up on the exchange
before any retry: a retried placement can never create a second order. The form is a UUID
(version 5), which Kraken's ``cl_ord_id`` accepts; SHA-1 over the inputs makes two different
inputs collide with negligible probability.
"""

from __future__ import annotations

import uuid
from hashlib import sha1

from mmops.domain.models import check_order_id, check_session_id

# Fixed forever: changing it changes every id and orphans live orders from their lookups.
MMOPS_NAMESPACE = uuid.UUID("ea42f27b-857a-4207-8d36-d02a68b6bd06")
_NAMESPACE = MMOPS_NAMESPACE.bytes


def client_order_id(session_id: str, position_id: str, generation: int) -> str:
    """The client order id of ``position_id``'s take-profit in ``generation`` (lowercase UUID).

    ``/`` cannot occur in a session or position id, so the joined name is unambiguous.
    Raises InvalidIdentifier for a malformed id and ValueError for a negative generation.
    """
    check_session_id(session_id)
    check_order_id(position_id)
    if not isinstance(generation, int) or isinstance(generation, bool) or generation < 0:
        raise ValueError(f"generation must be an int >= 0, got {generation!r}")
    return _uuid5(f"tp/{session_id}/{position_id}/{generation}")


def _uuid5(name: str) -> str:
    """``str(uuid.uuid5(MMOPS_NAMESPACE, name))`` without building a ``UUID`` (which cost more
    than the hash): SHA-1 of namespace and name, its first 16 bytes with the version (5) and
    the RFC 4122 variant bits set, in the 8-4-4-4-12 hex form."""
    digest = bytearray(sha1(_NAMESPACE + name.encode(), usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
