"""Every Redis key name of the mmops store, and nothing else (the paper venue's own keys are in
``mmops.adapters.paper.state``). See docs/REDIS_SCHEMA.md.

Each key of a session carries the session id as a ``{S}`` hash tag, so all of one session's
keys live in one Redis Cluster slot and a Lua script or MULTI may touch several of them.
Identifiers are validated before they reach a key, so no id can close the tag early or name
another session's key.
"""

from __future__ import annotations

from mmops.domain.models import check_order_id, check_session_id, check_symbol

# ZSET of every session id by start time: untagged, so it is written in a command of its own,
# never in a session's MULTI or script.
SESSIONS_INDEX = "sessions"
# Untagged single keys of the account, not of a session (each a key of its own, so any slot):
FILL_EVENTS = "events:fills"  # STREAM: new buy fills (session, pair) to settle (the default)
FILL_EVENTS_GROUP = "settle"  # its consumer group: the settle triggers of every worker
INGEST_STREAM = "mmops:ingest"  # STREAM: a user's own market maker feeds mmops (docs/INGEST.md)
INGEST_GROUP = "mmops"  # its consumer group: the ingest consumers of every worker


def feed_cursor(account: str) -> str:
    """STRING: the fill feed's position in the account's trade history."""
    return f"feed:cursor:{account}"


def _tag(session_id: str) -> str:
    return "{" + check_session_id(session_id) + "}"


def session(session_id: str) -> str:
    return f"session:{_tag(session_id)}"


def orders(session_id: str, symbol: str) -> str:
    return f"orders:{_tag(session_id)}:{check_symbol(symbol)}"


def fills(session_id: str, symbol: str) -> str:
    return f"fills:{_tag(session_id)}:{check_symbol(symbol)}"


def position(session_id: str, position_id: str) -> str:
    return f"position:{_tag(session_id)}:{check_order_id(position_id)}"


def positions(session_id: str, symbol: str) -> str:
    return f"positions:{_tag(session_id)}:{check_symbol(symbol)}"


def uncovered(session_id: str, symbol: str) -> str:
    return f"uncovered:{_tag(session_id)}:{check_symbol(symbol)}"


# The six service keys, named as docs/ARCHITECTURE.md (Redis contract) lists them.


def tp_attempt(session_id: str, position_id: str) -> str:
    return f"tp_attempt:{_tag(session_id)}:{check_order_id(position_id)}"


def tp_order(session_id: str, order_id: str) -> str:
    return f"tp_order:{_tag(session_id)}:{check_order_id(order_id)}"


def settlement_status(session_id: str) -> str:
    return f"settlement:status:{_tag(session_id)}"


def settlement_last_run(session_id: str) -> str:
    return f"settlement:last_run:{_tag(session_id)}"


def prices(session_id: str) -> str:
    """STREAM: the session's recorded tickers, one entry per settlement run (in the key
    registry; see ``mmops.adapters.redis.prices``)."""
    return f"prices:{_tag(session_id)}"


def price_path(session_id: str) -> str:
    """STREAM: the session's fill path, the venue's best bid and ask at each of its match
    steps, one entry per step (paper sessions; in the key registry)."""
    return f"path:{_tag(session_id)}"


def settlement_lock(session_id: str, scope: str = "") -> str:
    """The session's settlement lock; with ``scope``, the lock of one group of its pairs (a
    big session settled in parts). A group lock is not in the key registry: it lives only
    the lock's TTL."""
    if any(c in scope for c in "{}\r\n"):
        raise ValueError(f"a lock scope without braces or line breaks, got {scope!r}")
    base = f"lock:settlement:{_tag(session_id)}"
    return f"{base}:{scope}" if scope else base


def migration_completed(session_id: str) -> str:
    return f"migration:completed:{_tag(session_id)}"


def registry(session_id: str) -> str:
    """SET: the names of the session's keys whose names vary (per pair, per position, per
    order, per attempt), added by each writer in the same atomic step as the key itself, so
    deleting or expiring a session needs no SCAN (and works on a cluster)."""
    return f"keys:{_tag(session_id)}"


def fixed(session_id: str) -> list[str]:
    """The session's keys with fixed names (not in its registry), the registry included."""
    return [
        session(session_id),
        settlement_status(session_id),
        settlement_last_run(session_id),
        settlement_lock(session_id),
        migration_completed(session_id),
        registry(session_id),
    ]


def session_pattern(session_id: str) -> str:
    """A SCAN pattern matching every tagged key of one session (glob metacharacters escaped)."""
    tag = _tag(session_id)
    escaped = "".join("\\" + c if c in "*?[]\\{}" else c for c in tag)
    return f"*{escaped}*"


def reservations(account: str) -> str:
    """HASH: the account's balance reservations, one field per reservation id (see
    ``mmops.adapters.redis.reservations``). The account is the hash tag: one slot, so one
    Lua script updates the whole ledger atomically on a cluster too."""
    if not account or any(c in account for c in "{}\r\n"):
        raise ValueError(f"an account name without braces or line breaks, got {account!r}")
    return "reserve:{" + account + "}"
