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

import redis.exceptions as rex
from redis.asyncio.lock import Lock
from redis.exceptions import LockError

from mmops import logs
from mmops.adapters.redis import keys
from mmops.adapters.redis.client import Redis, redis_errors
from mmops.domain.records import SessionLease
from mmops.errors import LockNotAcquired

log = logs.get_logger("mmops.locks")

# Claim many attempts of one session in one call (their keys share the session's slot).
# Each attempt taken is added to the session's key registry (so deleting a session finds it).
# KEYS: the session's key registry, then attempt keys   ARGV: ttl ms, then one token per
# attempt key   → 1/0 per attempt key
_ACQUIRE_MANY = """
local acquired = {}
for i = 2, #KEYS do
  local ok = redis.call('SET', KEYS[i], ARGV[i], 'NX', 'PX', ARGV[1])
  if ok then redis.call('SADD', KEYS[1], KEYS[i]) end
  acquired[i - 1] = ok and 1 or 0
end
return acquired
"""

# Delete the attempts this worker still owns. KEYS: attempt keys   ARGV: one token per key
_RELEASE_MANY = """
local released = 0
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i] then released = released + redis.call('DEL', key) end
end
return released
"""


class SettlementLocks:
    """``lock:settlement:{S}``: one worker settles a session at a time (redis-py's Lock)."""

    def __init__(self, redis: Redis, ttl_seconds: float) -> None:
        self._r = redis
        self._ttl = ttl_seconds

    @contextlib.asynccontextmanager
    async def hold(self, session_id: str) -> AsyncIterator[SessionLease]:
        """Hold the session's lock for the block, extending it every third of its TTL.

        Yields the lease: its token is what the fence checks before any order is sent, and its
        ``lost`` flag turns on as soon as an extension finds the lock gone (a pause longer than
        the TTL). Raises LockNotAcquired at once if another worker holds it (no waiting: the
        next run will come). The lock is released on exit only if this worker still owns it.
        """
        lock = Lock(
            self._r,
            keys.settlement_lock(session_id),
            timeout=self._ttl,
            blocking=False,
            thread_local=False,
        )
        if not await _acquire(lock):
            raise LockNotAcquired(f"session {session_id} is being settled by another worker")
        token = lock.local.token
        lease = SessionLease(session_id, token.decode() if isinstance(token, bytes) else token)
        keeper = asyncio.create_task(self._keep(lock, lease))
        try:
            yield lease
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            try:
                await lock.release()
            except LockError:
                lease.lost = True
                log.warning("lock.lost", session=session_id)
            except (rex.ConnectionError, rex.TimeoutError, OSError) as e:
                # Redis is gone: the lock expires by its TTL; don't hide the error in flight.
                log.error("lock.release_failed", session=session_id, error=str(e))

    async def _keep(self, lock: Lock, lease: SessionLease) -> None:
        session_id = lease.session_id
        while True:
            await asyncio.sleep(self._ttl / 3)
            try:
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
async def _acquire(lock: Lock) -> bool:
    return bool(await lock.acquire())


class Attempts:
    """``tp_attempt:{S}:{P}``: who is placing a position's take-profit right now."""

    def __init__(self, redis: Redis, ttl_seconds: float) -> None:
        self._r = redis
        self._ttl_ms = int(ttl_seconds * 1000)
        self._acquire = redis.register_script(_ACQUIRE_MANY)
        self._release = redis.register_script(_RELEASE_MANY)

    @redis_errors
    async def acquire(self, session_id: str, position_ids: Sequence[str]) -> dict[str, str]:
        """Try every position at once (one call); return the tokens of those acquired."""
        if not position_ids:
            return {}
        tokens = {pid: secrets.token_hex(12) for pid in position_ids}
        acquired = await self._acquire(
            keys=[keys.registry(session_id), *[keys.tp_attempt(session_id, p) for p in tokens]],
            args=[self._ttl_ms, *tokens.values()],
        )
        return {pid: token for (pid, token), ok in zip(tokens.items(), acquired, strict=True) if ok}

    @redis_errors
    async def release(self, session_id: str, tokens: dict[str, str]) -> None:
        """Delete the attempts this worker still owns (one call)."""
        if not tokens:
            return
        await self._release(
            keys=[keys.tp_attempt(session_id, pid) for pid in tokens], args=list(tokens.values())
        )
