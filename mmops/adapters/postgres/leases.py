"""``work_leases``: settlement and migration work shared between workers through PostgreSQL.

A worker claims due sessions with ``SELECT ... FOR UPDATE SKIP LOCKED`` in one statement that
also writes the lease (``worker``, ``leased_until``) and commits: two claimers never get the
same row, and a row leased to a worker that died is due again once ``leased_until`` passes.
Every time is PostgreSQL's ``now()``, so the hosts' clocks never have to agree. Migration holds
its row lock for the whole session instead (:meth:`PostgresWorkLeases.hold`): a killed worker's
connection drops and the row is free at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime, timedelta

from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from mmops.adapters.postgres.pool import pg_errors
from mmops.domain.records import WorkItem, WorkKind

# The sessions each kind takes work for: settlement the recent or running ones (as the old
# newest-first discovery did, without its limit), migration those not yet complete.
_WANTED = {
    WorkKind.SETTLEMENT: (
        "(s.started_at >= %(since)s OR s.ended_at IS NULL OR s.ended_at >= %(since)s)"
    ),
    WorkKind.MIGRATION: "s.migrated_at IS NULL",
}

_DISCOVER = """
INSERT INTO work_leases (kind, session_id)
SELECT %(kind)s, s.id FROM sessions s WHERE {wanted}
ON CONFLICT DO NOTHING
"""

# At most one part of a session per claim, so a big session's parts go to several workers.
_CLAIM = """
WITH due AS (
    SELECT l.session_id, l.part, l.last_done FROM work_leases l
    JOIN sessions s ON s.id = l.session_id
    WHERE l.kind = %(kind)s AND {wanted} AND l.leased_until < now()
      AND (l.last_done IS NULL OR l.last_done < CASE
           WHEN %(round_started)s::timestamptz IS NOT NULL THEN %(round_started)s::timestamptz
           ELSE now() - CASE WHEN l.stale_since IS NULL
                THEN %(due_age)s ELSE %(stale_due_age)s END END)
    ORDER BY l.last_done NULLS FIRST, l.session_id, l.part
    LIMIT %(limit)s
    FOR UPDATE OF l SKIP LOCKED
), one AS (
    SELECT DISTINCT ON (session_id) session_id, part FROM due
    ORDER BY session_id, last_done NULLS FIRST, part
)
UPDATE work_leases l SET worker = %(worker)s, leased_until = now() + %(ttl)s
FROM one WHERE l.kind = %(kind)s AND l.session_id = one.session_id AND l.part = one.part
RETURNING l.session_id, l.part, l.last_done, l.pairs,
    ARRAY(SELECT g.part FROM work_leases g WHERE g.kind = l.kind
          AND g.session_id = l.session_id AND g.part <> '' ORDER BY g.part)
"""

_HOLD = """
SELECT l.session_id FROM work_leases l JOIN sessions s ON s.id = l.session_id
WHERE l.kind = %(kind)s AND l.part = '' AND {wanted} AND l.leased_until < now()
  AND (l.last_done IS NULL OR l.last_done < %(round_started)s)
ORDER BY l.last_done NULLS FIRST, l.session_id
LIMIT 1
FOR UPDATE OF l SKIP LOCKED
"""

# The sessions settlement may split into parts: more pairs than the group size, or split
# before (their parts are dropped when they no longer need any).
_SPLITTABLE = f"""
SELECT s.id, s.pairs FROM sessions s
WHERE {_WANTED[WorkKind.SETTLEMENT]}
  AND (jsonb_array_length(s.pairs) > %(max_pairs)s
       OR EXISTS (SELECT 1 FROM work_leases l WHERE l.kind = 'settlement'
                  AND l.session_id = s.id AND l.part <> ''))
ORDER BY s.id
"""  # noqa: S608 - constant SQL

# An active session's activity: its newest fill in PostgreSQL (migrated), else its start.
_ACTIVITY = """
SELECT s.id, GREATEST(s.started_at, (SELECT max(f.timestamp) FROM fills f
                                    WHERE f.session_id = s.id)) AS at
FROM sessions s JOIN work_leases l
  ON l.kind = 'settlement' AND l.session_id = s.id AND l.part = ''
WHERE s.ended_at IS NULL AND s.status <> 'ended'
"""

# Every part of a session is flagged (and unflagged) with it; each session is returned once.
_MARK_STALE = f"""
WITH activity AS ({_ACTIVITY}), flagged AS (
    UPDATE work_leases l SET stale_since = now() FROM activity a
    WHERE l.kind = 'settlement' AND l.session_id = a.id AND l.stale_since IS NULL
      AND a.at < now() - %(after)s
    RETURNING l.session_id)
SELECT DISTINCT session_id FROM flagged
"""  # noqa: S608 - constant SQL

_UNMARK_STALE = f"""
WITH cleared AS (
    UPDATE work_leases l SET stale_since = NULL
    WHERE l.kind = 'settlement' AND l.stale_since IS NOT NULL
      AND l.session_id NOT IN (SELECT a.id FROM ({_ACTIVITY}) a WHERE a.at < now() - %(after)s)
    RETURNING l.session_id)
SELECT DISTINCT session_id FROM cleared
"""  # noqa: S608 - constant SQL


class PostgresWorkLeases:
    """The ``WorkLeases`` port on PostgreSQL. Every statement is parameterised."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def discover(self, kind: WorkKind, since: datetime) -> datetime:
        """Create the missing rows of ``kind`` for the sessions it takes work for (settlement:
        started or ended after ``since``, or running); return PostgreSQL's now (a round's start)."""
        async with pg_errors(), self._pool.connection() as conn:
            params = {"kind": kind.value, "since": since}
            await conn.execute(_DISCOVER.format(wanted=_WANTED[kind]), params)
            cur = await conn.execute("SELECT now()")
            row = await cur.fetchone()
        assert row is not None
        started: datetime = row[0]
        return started

    async def begin_run(self, kind: WorkKind, worker: str, ttl: timedelta) -> datetime:
        """Register a one-off run of ``worker``; return its round's start: the earliest start
        among the runs in progress (heartbeat within ``ttl``), this one included."""
        async with pg_errors(), self._pool.connection() as conn:
            await conn.execute(
                "INSERT INTO work_runs (kind, worker) VALUES (%s, %s) ON CONFLICT (kind, worker)"
                " DO UPDATE SET started_at = now(), heartbeat_at = now()",
                (kind.value, worker),
            )
            cur = await conn.execute(
                "SELECT min(started_at) FROM work_runs"
                " WHERE kind = %s AND heartbeat_at > now() - %s::interval",
                (kind.value, ttl),
            )
            row = await cur.fetchone()
        assert row is not None and row[0] is not None
        started: datetime = row[0]
        return started

    async def beat(self, kind: WorkKind, worker: str) -> None:
        """This run is still going (its round stays open for runs started meanwhile)."""
        async with pg_errors(), self._pool.connection() as conn:
            await conn.execute(
                "UPDATE work_runs SET heartbeat_at = now() WHERE kind = %s AND worker = %s",
                (kind.value, worker),
            )

    async def end_run(self, kind: WorkKind, worker: str) -> None:
        async with pg_errors(), self._pool.connection() as conn:
            await conn.execute(
                "DELETE FROM work_runs WHERE kind = %s AND worker = %s", (kind.value, worker)
            )

    async def claim(
        self,
        kind: WorkKind,
        worker: str,
        limit: int,
        ttl: timedelta,
        due_age: timedelta,
        *,
        since: datetime,
        stale_due_age: timedelta | None = None,
        round_started: datetime | None = None,
    ) -> list[WorkItem]:
        """Lease up to ``limit`` due parts of sessions to ``worker`` for ``ttl``,
        longest-waiting first.

        Due: not leased now, and not done within ``due_age`` (``stale_due_age`` for a stale
        session; by default the same) — or, with ``round_started`` (a one-off run), not done
        since then: workers started together split the sessions, a later run does them all."""
        params = {
            "kind": kind.value,
            "worker": worker,
            "limit": limit,
            "ttl": ttl,
            "due_age": due_age,
            "stale_due_age": stale_due_age if stale_due_age is not None else due_age,
            "since": since,
            "round_started": round_started,
        }
        async with pg_errors(), self._pool.connection() as conn:
            cur = await conn.execute(_CLAIM.format(wanted=_WANTED[kind]), params)
            rows = await cur.fetchall()
        rows.sort(key=lambda r: (r[2] is not None, r[2].timestamp() if r[2] else 0.0, r[0], r[1]))
        return [
            WorkItem(sid, part, tuple(pairs or ()), tuple(groups) if part == "" else ())
            for sid, part, _, pairs, groups in rows
        ]

    async def done(self, kind: WorkKind, item: WorkItem, worker: str) -> bool:
        """Mark the part done in this round and end the lease, if ``worker`` still holds it
        (False when the lease expired and another worker took it)."""
        return await self._end(kind, item, worker, done=True)

    async def release(self, kind: WorkKind, item: WorkItem, worker: str) -> bool:
        """End ``worker``'s lease without marking it done: the part is due again at once."""
        return await self._end(kind, item, worker, done=False)

    async def _end(self, kind: WorkKind, item: WorkItem, worker: str, *, done: bool) -> bool:
        async with pg_errors(), self._pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE work_leases SET leased_until = now(),"
                " last_done = CASE WHEN %s THEN now() ELSE last_done END"
                " WHERE kind = %s AND session_id = %s AND part = %s AND worker = %s"
                " AND leased_until > now()",
                (done, kind.value, item.session_id, item.part, worker),
            )
            return cur.rowcount == 1

    async def splittable(self, since: datetime, max_pairs: int) -> dict[str, tuple[str, ...]]:
        """The pairs of the sessions settlement may split (more than ``max_pairs`` pairs, or
        split before), by session id."""
        async with pg_errors(), self._pool.connection() as conn:
            cur = await conn.execute(_SPLITTABLE, {"since": since, "max_pairs": max_pairs})
            rows = await cur.fetchall()
        return {sid: tuple(str(p) for p in pairs) for sid, pairs in rows}

    async def set_parts(
        self, kind: WorkKind, session_id: str, parts: Mapping[str, Sequence[str]]
    ) -> None:
        """Give the session exactly these parts (name → its pairs) besides its part '': new
        ones are due at once, with the stale flag of the session's part ''; a part whose pairs
        changed keeps its lease and takes the new pairs.

        A row left as it was is not locked (``ON CONFLICT DO UPDATE`` would lock it even where
        its ``WHERE`` leaves it unchanged): every worker runs this at the start of its run,
        and a claim meanwhile skips locked rows, so a peer could take the parts for done."""
        params = {
            "kind": kind.value,
            "sid": session_id,
            "names": list(parts),
            "pairs": [Jsonb(list(pairs)) for pairs in parts.values()],
        }
        async with pg_errors(), self._pool.connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO work_leases (kind, session_id, part, pairs, stale_since)"
                " SELECT %(kind)s, %(sid)s, p.name, p.pairs, (SELECT stale_since FROM work_leases"
                "   WHERE kind = %(kind)s AND session_id = %(sid)s AND part = '')"
                " FROM unnest(%(names)s::text[], %(pairs)s::jsonb[]) AS p(name, pairs)"
                " ON CONFLICT (kind, session_id, part) DO NOTHING",
                params,
            )
            await conn.execute(
                "UPDATE work_leases l SET pairs = p.pairs"
                " FROM unnest(%(names)s::text[], %(pairs)s::jsonb[]) AS p(name, pairs)"
                " WHERE l.kind = %(kind)s AND l.session_id = %(sid)s AND l.part = p.name"
                "   AND l.pairs IS DISTINCT FROM p.pairs",
                params,
            )
            await conn.execute(
                "DELETE FROM work_leases WHERE kind = %s AND session_id = %s"
                " AND part <> '' AND NOT (part = ANY(%s::text[]))",
                (kind.value, session_id, list(parts)),
            )

    async def renew(self, kind: WorkKind, item: WorkItem, worker: str, ttl: timedelta) -> bool:
        """Extend ``worker``'s lease by ``ttl`` from now; False when it is no longer its own
        (it ran out and another worker took it)."""
        async with pg_errors(), self._pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE work_leases SET leased_until = now() + %s"
                " WHERE kind = %s AND session_id = %s AND part = %s AND worker = %s"
                " AND leased_until > now()",
                (ttl, kind.value, item.session_id, item.part, worker),
            )
            return cur.rowcount == 1

    @contextlib.asynccontextmanager
    async def hold(
        self, kind: WorkKind, worker: str, round_started: datetime
    ) -> AsyncIterator[str | None]:
        """One session of ``kind`` not done since ``round_started``, its row locked (SKIP
        LOCKED) for as long as the block runs, marked done by ``worker`` when the block ends
        without an exception; None when none is due. An exception rolls back: the session is
        due again, and so is it when the worker dies (its connection, and lock, go with it)."""
        params = {"kind": kind.value, "round_started": round_started, "since": round_started}
        async with pg_errors(), self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(_HOLD.format(wanted=_WANTED[kind]), params)
            row = await cur.fetchone()
            yield None if row is None else row[0]
            if row is not None:
                await conn.execute(
                    "UPDATE work_leases SET worker = %s, last_done = now()"
                    " WHERE kind = %s AND session_id = %s AND part = ''",
                    (worker, kind.value, row[0]),
                )

    async def mark_stale(self, after: timedelta) -> tuple[list[str], list[str]]:
        """Flag running sessions with no fill for ``after`` stale and clear the flag of those
        that reported again or ended; return (newly stale, no longer stale)."""
        async with pg_errors(), self._pool.connection() as conn:
            cur = await conn.execute(_MARK_STALE, {"after": after})
            stale = [r[0] for r in await cur.fetchall()]
            cur = await conn.execute(_UNMARK_STALE, {"after": after})
            fresh = [r[0] for r in await cur.fetchall()]
        return stale, fresh

    async def stale(self, session_ids: list[str]) -> set[str]:
        """Those of ``session_ids`` flagged stale."""
        async with pg_errors(), self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT session_id FROM work_leases WHERE kind = 'settlement'"
                " AND stale_since IS NOT NULL AND session_id = ANY(%s)",
                (session_ids,),
            )
            return {r[0] for r in await cur.fetchall()}
