"""The Redis client: built from a URL, and redis-py errors mapped once into mmops.errors.

A single server (``redis://``, ``rediss://``, ``unix://``) gets redis-py's ``Redis``; a Redis
Cluster gets its ``RedisCluster``, chosen by the URL's scheme (``redis+cluster://host:port``,
``rediss+cluster://`` with TLS; any node of the cluster will do) or by
``MMOPS_REDIS_CLUSTER=true`` with a plain ``redis://`` URL. Both speak the same commands to the
adapters; every multi-key step (Lua script, MULTI, WATCH) touches keys of one hash tag only.
"""

from __future__ import annotations

import asyncio
import codecs
import functools
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, ParamSpec, TypeAlias, TypeVar

import hiredis
import redis.asyncio as aioredis
import redis.exceptions as rex
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.driver_info import DriverInfo

from mmops.config import redact_url
from mmops.errors import IntegrityError, StoreUnavailable

P = ParamSpec("P")
R = TypeVar("R")

Redis: TypeAlias = aioredis.Redis | RedisCluster
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def cluster_url(url: str) -> tuple[str, bool]:
    """(the URL redis-py takes, whether it names a cluster): ``redis+cluster://`` becomes
    ``redis://`` for ``RedisCluster``."""
    scheme, sep, rest = url.partition("://")
    plain = CLUSTER_SCHEMES.get(scheme.lower())
    if sep and plain is not None:
        return f"{plain}://{rest}", True
    return url, False


def is_cluster(redis: Redis) -> bool:
    return isinstance(redis, RedisCluster)


def create_client(url: str, cluster: bool = False, **kwargs: object) -> Redis:
    """A client with decoded responses and short timeouts so an outage fails fast.

    A ``RedisCluster`` when ``cluster`` is set or the URL's scheme is ``redis+cluster`` /
    ``rediss+cluster``, else a ``Redis``. Opens no connection yet: the first command does.
    Raises ``StoreUnavailable`` for a URL redis-py cannot parse, without echoing the URL's
    password.
    """
    plain_url, named_cluster = cluster_url(url)
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
        # What each connection tells the server (CLIENT SETINFO), made once: redis-py would
        # otherwise read its own version from the package metadata for every new connection
        # (about half a millisecond each; a settlement run opens a connection per pair).
        "driver_info": _driver_info(),
    }
    options.update(kwargs)
    try:
        if cluster or named_cluster:
            client: Redis = RedisCluster.from_url(plain_url, **options)
        else:
            client = aioredis.Redis.from_url(url, **options)  # type: ignore[arg-type]
    except (ValueError, rex.RedisClusterException) as e:
        raise StoreUnavailable("Redis", f"bad URL {redact_url(url)}: {e}") from None
    _pack_with_hiredis(client)
    return client


def _pack_with_hiredis(client: Redis) -> None:
    """Make the client's connections pack commands with hiredis, in C.

    redis-py's synchronous client does this when hiredis is installed; its asyncio client
    packs every argument in Python, about a tenth of a settlement run's instructions. The
    connection class the URL chose (TCP, TLS, Unix socket) is kept, as a subclass. No
    connection exists yet, so every connection is made with it. hiredis writes text as
    UTF-8: a client set to another encoding (``?encoding=`` in the URL) keeps redis-py's.
    """
    if isinstance(client, RedisCluster):
        # The nodes it starts from, and the settings each node it learns of is made with.
        kwargs = client.connection_kwargs
        if _utf8(kwargs):
            kwargs["connection_class"] = _hiredis_packing(kwargs["connection_class"])
            for node in client.startup_nodes:
                node.connection_class = kwargs["connection_class"]
    else:
        pool = client.connection_pool
        if _utf8(pool.connection_kwargs):
            pool.connection_class = _hiredis_packing(pool.connection_class)


def _utf8(connection_kwargs: Mapping[str, Any]) -> bool:
    return codecs.lookup(str(connection_kwargs.get("encoding", "utf-8"))).name == "utf-8"


def _hiredis_packing(base: type[AbstractConnection]) -> type[AbstractConnection]:
    """``base`` packing with hiredis: one class per base, made once."""
    if issubclass(base, _Packing):
        return base
    made = _PACKING.get(base)
    if made is None:
        made = _PACKING[base] = type(f"HiredisPacking{base.__name__}", (_Packing, base), {})
    return made


class _Packing:
    """Mixed into a connection class (before it)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        """One buffer packed by hiredis. redis-py's own packing takes what hiredis
        cannot: a command name of two words (``"CLIENT SETINFO"``), text that is not UTF-8
        (decoded with ``surrogateescape``, it must go back as the same bytes), bytearrays,
        and the types redis-py refuses with its own error."""
        name = args[0]
        if " " in name if isinstance(name, str) else b" " in name:
            return super().pack_command(*args)  # type: ignore[misc, no-any-return]
        try:
            return [hiredis.pack_command(args)]
        except (TypeError, UnicodeEncodeError):
            return super().pack_command(*args)  # type: ignore[misc, no-any-return]


_PACKING: dict[type[AbstractConnection], type[AbstractConnection]] = {}


@functools.cache
def _driver_info() -> DriverInfo:
    return DriverInfo()  # redis-py's name and version, as it would send them


async def ping_nodes(redis: Redis) -> None:
    """Ping the server, or every node of a cluster (each within 3 s). Raises StoreUnavailable
    naming every node that does not answer."""
    await _ping(redis)  # a cluster client learns its nodes here, or fails if it cannot
    if not isinstance(redis, RedisCluster):
        return
    nodes = redis.get_nodes()
    replies = await asyncio.gather(*[_ping_node(redis, n) for n in nodes], return_exceptions=True)
    failed = [
        f"node {node.name}: {type(reply).__name__}: {reply}"
        for node, reply in zip(nodes, replies, strict=True)
        if isinstance(reply, BaseException)
    ]
    if failed:
        raise StoreUnavailable("Redis", "cluster " + "; ".join(failed))


async def _ping_node(redis: RedisCluster, node: ClusterNode) -> Any:
    return await asyncio.wait_for(redis.ping(target_nodes=node), timeout=3)


async def scan_slot(redis: Redis, tagged_key: str, match: str, count: int = 1000) -> set[str]:
    """Keys matching ``match`` by SCAN: on a cluster, of the one node that holds
    ``tagged_key``'s slot (all keys of one hash tag live there), so nothing is missed and no
    other node is read. For keys that no registry knows; never on a hot path."""
    if not isinstance(redis, RedisCluster):
        return {str(key) async for key in redis.scan_iter(match=match, count=count)}
    node = redis.get_node_from_key(tagged_key)
    if node is None:
        raise StoreUnavailable("Redis", f"cluster: no node holds the slot of {tagged_key}")
    found: set[str] = set()
    cursor = 0
    while True:
        reply: Any = await redis.scan(cursor, match=match, count=count, target_nodes=node)
        cursors, chunk = reply  # ({node name: next cursor}, keys)
        cursor = int(cursors[node.name])
        found.update(str(key) for key in chunk)
        if not cursor:
            return found


def redis_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Map redis-py errors to the tree: connection and timeout errors, a cluster that is down,
    or slots still moving after redis-py's own retries to ``StoreUnavailable('Redis', ...)``;
    a command spanning slots (CROSSSLOT) to ``IntegrityError``: a bug, not an outage."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except (rex.CrossSlotTransactionError, rex.ClusterCrossSlotError) as e:
            raise IntegrityError(
                f"Redis cluster: one command or transaction spans several slots (a bug: "
                f"every multi-key step must use keys of one hash tag): {e}"
            ) from e
        except (rex.ConnectionError, rex.TimeoutError, OSError) as e:
            raise StoreUnavailable("Redis", f"{type(e).__name__}: {e}") from e
        except rex.MovedError as e:  # a plain client talking to a cluster, or slots moving
            raise StoreUnavailable(
                "Redis",
                f"cluster: MovedError: {e} (a Redis Cluster needs a redis+cluster:// URL or "
                "MMOPS_REDIS_CLUSTER=true)",
            ) from e
        except (rex.ClusterError, rex.TryAgainError, rex.AskError) as e:
            # CLUSTERDOWN, MASTERDOWN, TRYAGAIN, MOVED/ASK left after the client's retries.
            raise StoreUnavailable("Redis", f"cluster: {type(e).__name__}: {e}") from e
        except rex.RedisClusterException as e:  # no node reachable, slot not covered, ...
            raise StoreUnavailable("Redis", f"cluster: {type(e).__name__}: {e}") from e
        except rex.ResponseError as e:
            message = str(e)
            if any(w in message for w in ("LOADING", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN")):
                raise StoreUnavailable("Redis", message) from e
            if "CROSSSLOT" in message:
                raise IntegrityError(f"Redis cluster: keys in different slots (a bug): {e}") from e
            raise

    return wrapper


@redis_errors
async def _ping(redis: Redis) -> None:
    await redis.ping()
