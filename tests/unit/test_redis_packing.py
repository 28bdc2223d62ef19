"""Commands packed by hiredis are the bytes redis-py's own packing sends, argument for argument."""

from __future__ import annotations

import enum
from typing import Any

import pytest
import redis.asyncio as aioredis
import redis.exceptions as rex
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.cluster import RedisCluster

from mmops.adapters.redis.client import _hiredis_packing, create_client

# The client's settings for text: UTF-8, and back to the original bytes what was decoded with
# surrogateescape (a record that was not UTF-8).
PLAIN = aioredis.Connection(encoding_errors="surrogateescape")
PACKING = _hiredis_packing(aioredis.Connection)(encoding_errors="surrogateescape")

ESCAPED = st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF)  # a byte not UTF-8
ARGUMENTS = st.one_of(
    st.text(),
    st.text(st.one_of(st.characters(codec="utf-8"), ESCAPED)),
    st.binary(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
)


def packed(connection: Any, *args: object) -> bytes:
    return b"".join(connection.pack_command(*args))


class Side(enum.IntEnum):
    BUY = 1


@given(st.sampled_from(["EVALSHA", "HSET", b"GET"]), st.lists(ARGUMENTS, max_size=12))
def test_hiredis_packs_every_command_as_redis_py_does(
    name: str | bytes, args: list[object]
) -> None:
    assert packed(PACKING, name, *args) == packed(PLAIN, name, *args)


@pytest.mark.parametrize(
    "args",
    [
        ("SET", "k", "é ✓ 名\x00"),
        ("SET", "k", memoryview(b"raw")),
        ("SET", "k", 0.1, -0.0, 1e16, 10**30, -7, float("inf")),
        ("SET", "k", "x" * 10_000),  # beyond redis-py's buffer cutoff: one chunk, same stream
    ],
)
def test_what_hiredis_packs_is_what_redis_py_sends(args: tuple[object, ...]) -> None:
    assert packed(PACKING, *args) == packed(PLAIN, *args)


@pytest.mark.parametrize(
    "args",
    [
        ("CLIENT SETINFO", "LIB-NAME", "redis-py"),  # a command name of two words
        (b"CLIENT SETINFO", "LIB-VER", "8"),
        ("SET", "k", "\udcff\udc80 not UTF-8"),  # decoded with surrogateescape
        ("SET", "k", bytearray(b"raw")),
        ("SET", "k", Side.BUY),  # an int subclass: redis-py writes its value
    ],
)
def test_what_hiredis_cannot_pack_goes_redis_py_s_way(args: tuple[object, ...]) -> None:
    assert packed(PACKING, *args) == packed(PLAIN, *args)


@pytest.mark.parametrize("bad", [True, None, [1], {"a": 1}])
def test_a_value_redis_py_refuses_is_refused_the_same_way(bad: Any) -> None:
    with pytest.raises(rex.DataError):
        PLAIN.pack_command("SET", "k", bad)
    with pytest.raises(rex.DataError):
        PACKING.pack_command("SET", "k", bad)


def test_clients_connect_with_the_packing_class_their_url_chose() -> None:
    tcp = create_client("redis://127.0.0.1:6379/0")
    unix = create_client("unix:///tmp/nothing-here.sock?db=0")
    tls = create_client("rediss://127.0.0.1:6380/0")
    for client, base in (
        (tcp, aioredis.Connection),
        (unix, aioredis.UnixDomainSocketConnection),
        (tls, aioredis.SSLConnection),
    ):
        assert isinstance(client, aioredis.Redis)
        made = client.connection_pool.connection_class
        assert issubclass(made, base) and made is not base
        assert made is _hiredis_packing(base)  # made once per connection class


def test_a_cluster_client_s_nodes_connect_with_the_packing_class() -> None:
    """The node it starts from, and those it learns of later (made with its settings)."""
    cluster = create_client("redis+cluster://127.0.0.1:7000")
    assert isinstance(cluster, RedisCluster)
    made = _hiredis_packing(aioredis.Connection)
    assert cluster.connection_kwargs["connection_class"] is made
    assert [node.connection_class for node in cluster.startup_nodes] == [made]


def test_a_client_set_to_another_encoding_keeps_redis_py_s_packing() -> None:
    """hiredis writes text as UTF-8; redis-py writes it in the client's encoding."""
    latin = create_client("redis://127.0.0.1:6379/0?encoding=latin-1")
    assert isinstance(latin, aioredis.Redis)
    made = latin.connection_pool.connection_class
    assert made is aioredis.Connection
    assert b"\xe9" in packed(made(encoding="latin-1"), "SET", "k", "é")
