"""The Redis client: built from a URL, and redis-py errors mapped once into mmops.errors."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import redis.asyncio as aioredis
import redis.exceptions as rex
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from mmops.config import redact_url
from mmops.errors import StoreUnavailable

P = ParamSpec("P")
R = TypeVar("R")

Redis = aioredis.Redis


def create_client(url: str, **kwargs: object) -> Redis:
    """A client with decoded responses and short timeouts so an outage fails fast.

    Opens no connection yet: the first command does. Raises ``StoreUnavailable`` for a URL
    redis-py cannot parse, without echoing the URL's password.
    """
    options: dict[str, object] = {
        "decode_responses": True,
        # Bytes that are not UTF-8 (a corrupt or foreign record) decode to lone surrogates
        # instead of failing the whole reply: the record is then refused with a reason.
        "encoding_errors": "surrogateescape",
        "socket_connect_timeout": 3,
        "socket_timeout": 10,
        "health_check_interval": 30,
        # A restarted server closes our pooled connections: reconnect and retry a few times,
        # quickly, before reporting Redis as unavailable.
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
        "retry_on_error": [rex.ConnectionError, rex.TimeoutError],
    }
    options.update(kwargs)
    try:
        return aioredis.Redis.from_url(url, **options)  # type: ignore[arg-type]
    except ValueError as e:
        raise StoreUnavailable("Redis", f"bad URL {redact_url(url)}: {e}") from None


def redis_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Map redis-py connection and timeout errors to ``StoreUnavailable('Redis', ...)``."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except (rex.ConnectionError, rex.TimeoutError, OSError) as e:
            raise StoreUnavailable("Redis", f"{type(e).__name__}: {e}") from e
        except rex.ResponseError as e:
            if "LOADING" in str(e) or "MASTERDOWN" in str(e):
                raise StoreUnavailable("Redis", str(e)) from e
            raise

    return wrapper
