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

from mmops import logs
from mmops.adapters.redis import keys, scripts
from mmops.adapters.redis.client import Redis, redis_errors
from mmops.adapters.redis.store import positions_from_rows
from mmops.domain.models import Position
from mmops.domain.records import ReadResult, SessionLease
from mmops.errors import LockNotAcquired, MmopsError

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


# The settlement locks of one session (its keys share the session's slot): all or none.
# KEYS: lock keys   ARGV: token, ttl ms   → 1 when every one was free and is now ours, else 0
_LOCK_ALL = """
for _, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then return 0 end
end
for _, key in ipairs(KEYS) do redis.call('SET', key, ARGV[1], 'PX', ARGV[2]) end
return 1
"""

# Extend the locks still ours. KEYS: lock keys   ARGV: token, ttl ms   → 1 if all were ours
_EXTEND_ALL = """
local all = 1
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then redis.call('PEXPIRE', key, ARGV[2]) else all = 0 end
end
return all
"""

# Delete the locks still ours. KEYS: lock keys   ARGV: token   → how many were ours
_UNLOCK_ALL = """
local released = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then released = released + redis.call('DEL', key) end
end
return released
"""

LOCK_POLL_S = 0.05  # how often a waiting holder tries again


class SettlementLocks:
    """``lock:settlement:{S}``: one worker settles a session at a time; a big session settled
    in parts has a lock per group of pairs too (``lock:settlement:{S}:g0``, ...).

    A holder takes one or several of a session's locks in one script, all or none, under one
    random token (``SET PX``), and keeps them alive every third of the TTL; only the token's
    holder may extend or delete them, so a worker whose lock expired never releases a lock
    another worker has since taken. (redis-py's ``Lock`` holds one key: taking several one by
    one would hold the first while waiting for the next, and let them expire meanwhile.)
    """

    def __init__(self, redis: Redis, ttl_seconds: float) -> None:
        self._r = redis
        self._ttl = ttl_seconds
        self._lock_all = redis.register_script(_LOCK_ALL)
        self._extend_all = redis.register_script(_EXTEND_ALL)
        self._unlock_all = redis.register_script(_UNLOCK_ALL)

    @contextlib.asynccontextmanager
    async def hold(self, session_id: str, scope: str = "") -> AsyncIterator[SessionLease]:
        """Hold the session's lock (or, with ``scope``, one group's) for the block.

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
        """Hold several of the session's locks at once (all or none), trying again for up to
        ``wait`` seconds in all while any is held; the lease's scope is the first by name
        (``''``, the session's own lock, when it is among them). Raises LockNotAcquired when
        they cannot all be had in time."""
        names = sorted(set(scopes))
        lock_keys = [keys.settlement_lock(session_id, scope) for scope in names]
        token = secrets.token_hex(16)
        deadline = asyncio.get_running_loop().time() + wait
        while not await self._call(self._lock_all, lock_keys, token, self._ttl_ms):
            if asyncio.get_running_loop().time() >= deadline:
                raise LockNotAcquired(f"session {session_id} is being settled by another worker")
            await asyncio.sleep(LOCK_POLL_S)
        lease = SessionLease(session_id, token, scope=names[0])
        keeper = asyncio.create_task(self._keep(lock_keys, lease))
        try:
            yield lease
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            await self._release(lock_keys, lease)

    @property
    def _ttl_ms(self) -> int:
        return int(self._ttl * 1000)

    @redis_errors
    async def _call(self, script: Any, lock_keys: list[str], *args: object) -> int:
        return int(await script(keys=lock_keys, args=list(args)))

    async def _release(self, lock_keys: list[str], lease: SessionLease) -> None:
        """Delete the locks this worker still owns; one gone already means it was lost."""
        try:
            released = await self._call(self._unlock_all, lock_keys, lease.token)
        except MmopsError as e:  # Redis is gone: the locks expire by their TTL
            log.error("lock.release_failed", session=lease.session_id, error=str(e))
            return
        if released < len(lock_keys):
            lease.lost = True
            log.warning("lock.lost", session=lease.session_id)

    async def _keep(self, lock_keys: list[str], lease: SessionLease) -> None:
        session_id = lease.session_id
        while True:
            await asyncio.sleep(self._ttl / 3)
            try:
                ours = await self._call(self._extend_all, lock_keys, lease.token, self._ttl_ms)
            except MmopsError as e:
                # Redis is gone; the run itself will fail on its next command and say so. The
                # lock is no longer kept alive, so it is treated as lost: nothing more is sent.
                lease.lost = True
                log.error("lock.extend_failed", session=session_id, error=str(e))
                return
            if not ours:
                lease.lost = True  # the fence refuses anything more for this session
                log.error("settlement.lock_lost", session=session_id)
                return


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
