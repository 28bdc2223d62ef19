"""Quarantine in ``migration_rejects``: one row per Redis record (a hash of its key: keys can be
long), holding its latest text and the kind of record it is (what completeness counts it as).
Migration's orders and fills and its analytics step write through :func:`write_rejects`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import AsyncConnection

from mmops.domain.records import Reject

_REJECT = """
INSERT INTO migration_rejects (session_id, kind, symbol, redis_key, raw_payload, reason)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (session_id, md5(redis_key)) DO UPDATE SET
    symbol = EXCLUDED.symbol, raw_payload = EXCLUDED.raw_payload, reason = EXCLUDED.reason
WHERE (migration_rejects.raw_payload, migration_rejects.reason)
      IS DISTINCT FROM (EXCLUDED.raw_payload, EXCLUDED.reason)
"""


def storable(text: str) -> str:
    """``text`` as PostgreSQL can store it: a NUL and lone surrogates (which hostile records can
    hold) written as escapes, so their reject is recorded instead of failing the session."""
    if "\x00" in text or not text.isascii():
        text = text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode()
    return text


async def write_rejects(
    conn: AsyncConnection[Any], session_id: str, rejects: Sequence[Reject]
) -> None:
    """Record each reject once per Redis key (a record quarantined again keeps one row)."""
    if not rejects:
        return
    rows = [
        (
            session_id,
            r.kind.value,
            None if r.symbol is None else storable(r.symbol),
            storable(r.key),
            storable(r.raw),
            storable(r.reason),
        )
        for r in rejects
    ]
    async with conn.cursor() as cur:
        await cur.executemany(_REJECT, rows)
