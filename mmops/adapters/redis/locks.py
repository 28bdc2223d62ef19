"""Locks in Redis: the per-session settlement lock and the per-position take-profit attempts.

Both are a random token stored with ``SET NX PX``; only the holder of the token may extend or
delete the key (a compare-and-delete script), so a worker whose lock expired can never release
a lock another worker has since taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import redis.exceptions as rex
from redis.asyncio.lock import Lock
from redis.exceptions import LockError

from mmops import logs
from mmops.adapters.redis import keys, scripts
from mmops.adapters.redis.client import Redis, redis_errors
from mmops.adapters.redis.store import positions_from_rows
from mmops.domain.models import Position
from mmops.domain.records import ReadResult, SessionLease
from mmops.errors import LockNotAcquired

log = logs.get_logger("mmops.locks")

CLAIM_CHUNK = 500  # positions claimed per script call

# Claim many attempts of one session in one call (their keys share the session's slot), all
# with one token (the caller's for this call), and read the positions claimed in the same
# atomic step: what the caller reads is what it holds, no fill or take-profit in between.
# Each attempt taken is added to the session's key registry (so deleting a session finds it).
# KEYS: the session's key registry, then per position its attempt key (and, reading, its
#       position hash)
# ARGV: ttl ms, the token, the keys per position (1, or 2 when reading)
# → per position: 0 (held by another), else 1, or when reading the position's field/value
#   pairs (empty if it has none)
_ACQUIRE_MANY = (
    scripts.REGISTER
    + """
local step = tonumber(ARGV[3])
local replies, taken = {}, {}
for i = 2, #KEYS, step do
  if redis.call('SET', KEYS[i], ARGV[2], 'NX', 'PX', ARGV[1]) then
    taken[#taken + 1] = KEYS[i]
    if step == 2 then
      replies[#replies + 1] = redis.call('HGETALL', KEYS[i + 1])
    else
      replies[#replies + 1] = 1
    end
  else
    replies[#replies + 1] = 0
  end
end
register(KEYS[1], taken, 1)
return replies
"""
)

# Delete the attempts this worker still owns.
# KEYS: attempt keys   ARGV: one token per key, or one token for all of them
_RELEASE_MANY = """
local released = 0
for i, key in ipairs(KEYS) do
  local token = ARGV[i]
  if #ARGV == 1 then token = ARGV[1] end
  if redis.call('GET', key) == token then released = released + redis.call('DEL', key) end
end
return released
"""


class SettlementLocks:
    """``lock:settlement:{S}``: one worker settles a session at a time (redis-py's Lock); a big
    session settled in parts has a lock per group of pairs (``lock:settlement:{S}:g0``, ...)."""

    def __init__(self, redis: Redis, ttl_seconds: float) -> None:
        self._r = redis
        self._ttl = ttl_seconds

    @contextlib.asynccontextmanager
    async def hold(self, session_id: str, scope: str = "") -> AsyncIterator[SessionLease]:
        """Hold the session's lock (or, with ``scope``, one group's) for the block, extending
        it every third of its TTL.

        Yields the lease: its token is what the fence checks before any order is sent, and its
        ``lost`` flag turns on as soon as an extension finds the lock gone (a pause longer than
        the TTL). Raises LockNotAcquired at once if another worker holds it (no waiting: the
        next run will come). The lock is released on exit only if this worker still owns it.
        """
        async with self.hold_all(session_id, (scope,), wait=0) as lease:
            yield lease

    @contextlib.asynccontextmanager
    async def hold_all(
        self, session_id: str, scopes: Sequence[str], wait: float
    ) -> AsyncIterator[SessionLease]:
        """Hold several of the session's locks at once, all with one token (the lease's scope
        is the first of them), waiting up to ``wait`` seconds for each: the part of a split
        session that needs all of it waits for its groups' runs to end. Taken in name order,
        so two such holders never wait on each other in a circle. Raises LockNotAcquired (and
        keeps none) when one cannot be had."""
        names = sorted(set(scopes))
        token = secrets.token_hex(16)
        locks: list[Lock] = []
        try:
            for scope in names:
                lock = Lock(
                    self._r,
                    keys.settlement_lock(session_id, scope),
                    timeout=self._ttl,
                    blocking=wait > 0,
                    blocking_timeout=wait if wait > 0 else None,
                    thread_local=False,
                )
                if not await _acquire(lock, token):
                    raise LockNotAcquired(
                        f"session {session_id} is being settled by another worker"
                    )
                locks.append(lock)
        except BaseException:
            await self._release(session_id, locks, None)
            raise
        lease = SessionLease(session_id, token, scope=names[0] if names else "")
        keeper = asyncio.create_task(self._keep(locks, lease))
        try:
            yield lease
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            await self._release(session_id, locks, lease)

    async def _release(
        self, session_id: str, locks: Sequence[Lock], lease: SessionLease | None
    ) -> None:
        """Release each lock this worker still owns."""
        for lock in locks:
            try:
                await lock.release()
            except LockError:
                if lease is not None:
                    lease.lost = True
                log.warning("lock.lost", session=session_id)
            except (rex.ConnectionError, rex.TimeoutError, OSError) as e:
                # Redis is gone: the lock expires by its TTL; don't hide the error in flight.
                log.error("lock.release_failed", session=session_id, error=str(e))

    async def _keep(self, locks: Sequence[Lock], lease: SessionLease) -> None:
        session_id = lease.session_id
        while True:
            await asyncio.sleep(self._ttl / 3)
            try:
                for lock in locks:
                    await lock.extend(self._ttl, replace_ttl=True)
            except LockError:
                lease.lost = True  # the fence refuses anything more for this session
                log.error("settlement.lock_lost", session=session_id)
                return
            except (rex.ConnectionError, rex.TimeoutError, OSError) as e:
                # Redis is gone; the run itself will fail on its next command and say so. The
                # lock is no longer kept alive, so it is treated as lost: nothing more is sent.
                lease.lost = True
                log.error("lock.extend_failed", session=session_id, error=str(e))
                return


@redis_errors
async def _acquire(lock: Lock, token: str) -> bool:
    return bool(await lock.acquire(token=token))


class Attempts:
    """``tp_attempt:{S}:{P}``: who is placing a position's take-profit right now."""

    def __init__(self, redis: Redis, ttl_seconds: float) -> None:
        self._r = redis
        self._ttl_ms = int(ttl_seconds * 1000)
        self._acquire = redis.register_script(_ACQUIRE_MANY)
        self._release = redis.register_script(_RELEASE_MANY)

    @redis_errors
    async def acquire(self, session_id: str, position_ids: Sequence[str]) -> dict[str, str]:
        """Try every position at once (one call per CLAIM_CHUNK); return the tokens of those
        acquired (one token per call: it is this worker's, whatever the position)."""
        tokens, _ = await self._claim(session_id, position_ids, read=False)
        return tokens

    @redis_errors
    async def acquire_reading(
        self, session_id: str, position_ids: Sequence[str]
    ) -> tuple[dict[str, str], ReadResult[Position]]:
        """Claim every position at once and read, in the same atomic step, those acquired:
        the tokens of those acquired, and their positions as they are now (a position with
        no fields is left out; one that does not parse is in ``bad``)."""
        return await self._claim(session_id, position_ids, read=True)

    async def _claim(
        self, session_id: str, position_ids: Sequence[str], read: bool
    ) -> tuple[dict[str, str], ReadResult[Position]]:
        ids = list(dict.fromkeys(position_ids))
        token = secrets.token_hex(12)
        tokens: dict[str, str] = {}
        result: ReadResult[Position] = ReadResult()
        for start in range(0, len(ids), CLAIM_CHUNK):
            chunk = ids[start : start + CLAIM_CHUNK]
            names = [keys.position(session_id, pid) for pid in chunk] if read else []
            script_keys = [keys.registry(session_id)]
            for i, pid in enumerate(chunk):
                script_keys.append(keys.tp_attempt(session_id, pid))
                if read:
                    script_keys.append(names[i])
            replies = cast(
                list[Any],
                await self._acquire(keys=script_keys, args=[self._ttl_ms, token, 2 if read else 1]),
            )
            taken = [i for i, reply in enumerate(replies) if reply != 0]
            tokens.update((chunk[i], token) for i in taken)
            if read:
                positions_from_rows(
                    session_id,
                    [chunk[i] for i in taken],
                    [names[i] for i in taken],
                    [replies[i] for i in taken],
                    result,
                )
        return tokens, result

    @redis_errors
    async def release(self, session_id: str, tokens: dict[str, str]) -> None:
        """Delete the attempts this worker still owns (one call)."""
        if not tokens:
            return
        values = list(tokens.values())
        same = all(t == values[0] for t in values)
        await self._release(
            keys=[keys.tp_attempt(session_id, pid) for pid in tokens],
            args=values[:1] if same else values,
        )
