"""Migration benchmark: ~1,000,000 fills from Redis to PostgreSQL.

Writes SESSIONS x PAIRS x FILLS fills (two per order) into Redis the way the store lays them
out, registers and ends the sessions, then runs ``mmops migrate`` as a subprocess (its own peak
RSS, reported by a small launcher). For comparison it measures, in the same run:

- a plain COPY of the same rows into an empty table of the same shape as ``fills`` (a target:
  ``ratio_to_plain_copy`` = COPY time / migrate time, higher is better) and, for scale, into an
  empty table with no indexes or constraints;
- the straightforward script a user would write (``SCRIPT`` below): HSCAN
  each session's per-pair hashes, ``json.loads`` each record, COPY the rows into the same
  ``orders`` and ``fills`` tables, one session after another in one transaction each, no
  checks at all (a target: ``ratio_to_script`` = migrate time / script time, lower is better).
  It runs as a subprocess too, on the same data, into the same emptied warehouse.

Prints one JSON object, with the CPU seconds each round's programs spent (``cpu_s``: the
program itself, the PostgreSQL backends serving it, read from ``/proc`` as pg_stat_statements
is not required, and the Redis server; ``*_postgres_autovacuum``: the part of the PostgreSQL
figure that autovacuum workers spent on the bench database meanwhile, which the program did
not ask for).

Servers: MMOPS_TEST_REDIS_URL / MMOPS_TEST_DATABASE_URL as the tests use them, else embedded.
Each round empties the warehouse and migrates again; times are the rounds' medians (a single
run swings by a fifth on this machine). Run:
.venv/bin/python bench/migration.py [--sessions 100 --pairs 10 --fills 1000 --rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import io
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmops import logs
from mmops.adapters.redis import codec, keys
from mmops.adapters.redis.client import create_client
from mmops.bootstrap import Urls, open_runtime
from mmops.config import Settings
from mmops.domain.models import Fill, Order, OrderStatus, Session, Side
from tests.conftest import SessionIds
from tests.integration.world import PAIRS
from tests.servers import bench_servers

T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def generate(
    redis_url: str, database_url: str, sessions: int, pairs: int, fills: int
) -> list[str]:
    settings = Settings(redis_url=redis_url, database_url=database_url)  # type: ignore[arg-type]
    ids = []
    async with open_runtime(settings, Urls(redis_url, database_url)) as rt:
        for s in range(sessions):
            sid = f"bench-{uuid.uuid4().hex[:10]}"
            ids.append(sid)
            await rt.registry.start(Session(sid, PAIRS[:pairs], T0))
            async with rt.redis.pipeline(transaction=False) as pipe:
                for pair in PAIRS[:pairs]:
                    orders, fill_map = {}, {}
                    for i in range(fills // 2):
                        at = T0 + timedelta(seconds=s * 10_000 + i)
                        oid = f"{pair.replace('/', '')}-o{i}"
                        price = Decimal(100) + Decimal(i % 97) / 10
                        side = Side.BUY if i % 2 == 0 else Side.SELL
                        order = Order(
                            sid,
                            oid,
                            pair,
                            side,
                            price,
                            Decimal(2),
                            at,
                            OrderStatus.FILLED,
                            Decimal(2),
                        )
                        orders[oid] = codec.order_to_json(order)
                        for part in range(2):
                            f = Fill(sid, oid, pair, side, price, Decimal(1), Decimal("0.025"),
                                     at + timedelta(milliseconds=part))  # fmt: skip
                            fill_map[f.key] = codec.fill_to_json(f)
                    pipe.hset(keys.orders(sid, pair), mapping=orders)
                    pipe.hset(keys.fills(sid, pair), mapping=fill_map)
                await pipe.execute()
            await rt.registry.end(sid, T0 + timedelta(days=1))
    return ids


def compile_bytecode() -> None:
    """Compile mmops's modules to bytecode, as installing a package does (the script's
    libraries, psycopg and redis, were compiled when pip installed them). Where
    PYTHONDONTWRITEBYTECODE is set, as on the machines here, an editable install would otherwise
    compile every mmops module from source each time the command starts."""
    compileall.compile_dir(Path(__file__).resolve().parents[1] / "mmops", quiet=1)


def checkpoint(database_url: str) -> None:
    """Start a timed phase from a checkpoint, so neither phase pays to flush the other's pages
    or its WAL's full-page images (the figures otherwise swing by a third between runs)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")


# A small launcher runs `mmops migrate` and reports its peak RSS: Linux keeps the RSS a child
# had before exec (the whole parent, as vfork shares it) in ru_maxrss, so measuring from this
# large process would report this process's size, not the migration's.
_LAUNCH = (
    "import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]);"
    " u = resource.getrusage(resource.RUSAGE_CHILDREN);"
    " print(u.ru_utime + u.ru_stime, u.ru_maxrss, file=sys.stderr);"
    " sys.exit(code)"
)


class BackendCpu:
    """CPU seconds spent by the PostgreSQL backends serving the bench database while a phase
    runs: its backends' pids are listed from ``pg_stat_activity`` every 50 ms and their CPU
    read from ``/proc/<pid>/stat`` (the last reading of each; a backend's final 50 ms may be
    missed). Needs PostgreSQL on this host; otherwise reports None."""

    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._seen: dict[int, float] = {}
        self._kinds: dict[int, str] = {}  # pid → backend_type
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._tick = os.sysconf("SC_CLK_TCK")
        self.available = True

    def __enter__(self) -> BackendCpu:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def seconds(self) -> float | None:
        return round(sum(self._seen.values()), 2) if self.available else None

    @property
    def by_kind(self) -> dict[str, float]:
        """The same seconds per backend type (client backends, autovacuum workers...)."""
        kinds: dict[str, float] = {}
        for pid, spent in self._seen.items():
            kind = self._kinds.get(pid, "?")
            kinds[kind] = round(kinds.get(kind, 0.0) + spent, 2)
        return kinds

    def _sample(self) -> None:
        with psycopg.connect(self._url, autocommit=True) as conn:
            while not self._stop.wait(0.05):
                rows = conn.execute(
                    "SELECT pid, backend_type FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                ).fetchall()
                for pid, kind in rows:
                    self._kinds[pid] = kind
                    try:
                        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    except OSError:
                        self.available = self.available and Path("/proc/self/stat").exists()
                        continue
                    self._seen[pid] = (int(fields[11]) + int(fields[12])) / self._tick


def _env(redis_url: str, database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMOPS_")}
    env.update(MMOPS_REDIS_URL=redis_url, MMOPS_DATABASE_URL=database_url, MMOPS_LOG_LEVEL="ERROR")
    return env


@dataclass
class Ran:
    """One timed program: wall seconds, and CPU seconds of the program itself, of the
    PostgreSQL backends serving it and of the Redis server (all its clients: others' work on a
    shared server counts too)."""

    wall: float
    cpu: float
    postgres_cpu: float | None
    redis_cpu: float
    peak_kb: int
    stdout: str
    autovacuum_cpu: float = 0.0  # of postgres_cpu, what autovacuum spent meanwhile


def redis_cpu(redis_url: str) -> float:
    import redis

    with redis.Redis.from_url(redis_url) as r:
        info = r.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def timed(redis_url: str, database_url: str, argv: list[str]) -> Ran:
    """Run ``argv`` through the launcher, from a checkpoint."""
    checkpoint(database_url)
    redis_before = redis_cpu(redis_url)
    with BackendCpu(database_url) as pg:
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", _LAUNCH, *argv], env=_env(redis_url, database_url),
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{argv} failed ({done.returncode}): {done.stderr[-2000:]}")
    cpu, peak_kb = done.stderr.strip().splitlines()[-1].split()
    redis_spent = redis_cpu(redis_url) - redis_before
    autovacuum = pg.by_kind.get("autovacuum worker", 0.0)
    return Ran(wall, float(cpu), pg.seconds, redis_spent, int(peak_kb), done.stdout, autovacuum)


def migrate(redis_url: str, database_url: str) -> Ran:
    """``mmops migrate --json``."""
    argv = [sys.executable, "-m", "mmops.entrypoints", "migrate", "--json"]
    return timed(redis_url, database_url, argv)


def run_script(redis_url: str, database_url: str) -> Ran:
    """The straightforward script (``SCRIPT``), a program of its own as ``mmops migrate`` is."""
    return timed(redis_url, database_url, [sys.executable, "-c", SCRIPT, redis_url, database_url])


# What a user would write to move the data, with no checks: no validation, no
# de-duplication, no quarantine, no statistics, no verification; run as a program of its own
# that imports only what it uses. HSCAN with the same COUNT as mmops reads (redis-py's default
# of 10 would make the script needlessly slow). The key names are those docs/REDIS_SCHEMA.md
# documents. Arguments: the Redis URL, the database URL.
SCRIPT = """
import json, sys
import psycopg, redis

r = redis.Redis.from_url(sys.argv[1], decode_responses=True)
with psycopg.connect(sys.argv[2]) as conn:
    sessions = conn.execute("SELECT id, pairs FROM sessions ORDER BY id").fetchall()
    for sid, pairs in sessions:
        with conn.transaction(), conn.cursor() as cur:
            with cur.copy(
                "COPY orders (session_id, order_id, symbol, pair_index, side, kind, price,"
                " amount, filled, status, client_order_id, created_at) FROM STDIN"
            ) as copy:
                for index, pair in enumerate(pairs):
                    for _, raw in r.hscan_iter(f"orders:{{{sid}}}:{pair}", count=1000):
                        o = json.loads(raw)
                        copy.write_row((sid, o["order_id"], pair, index, o["side"], o["kind"],
                                        o["price"], o["amount"], o["filled"], o["status"],
                                        o["client_order_id"], o["created_at"]))
            with cur.copy(
                "COPY fills (session_id, order_id, symbol, side, price, quantity, fee,"
                " trade_id, timestamp) FROM STDIN"
            ) as copy:
                for pair in pairs:
                    for _, raw in r.hscan_iter(f"fills:{{{sid}}}:{pair}", count=1000):
                        f = json.loads(raw)
                        copy.write_row((sid, f["order_id"], pair, f["side"], f["price"],
                                        f["quantity"], f["fee"], f["trade_id"],
                                        f["timestamp"]))
r.close()
"""


def plain_copy(database_url: str) -> dict[str, tuple[int, float]]:
    """COPY the migrated fills out, then time a plain COPY of them into an empty table of the
    same shape as ``fills`` (the target's reference) and, for scale, into one with no indexes
    or constraints at all."""
    columns = "session_id, order_id, symbol, side, price, quantity, fee, trade_id, timestamp"
    with psycopg.connect(database_url, autocommit=True) as conn:
        buffer = io.BytesIO()
        with conn.cursor().copy(f"COPY (SELECT {columns} FROM fills) TO STDOUT") as copy:
            for block in copy:
                buffer.write(block)
        data = buffer.getvalue()
        timed = {}
        # The same table shape as fills, indexes and unique constraints included: what any
        # write of these rows into the warehouse has to pay.
        for name, shape in (("same_shape", "INCLUDING ALL"), ("bare", "INCLUDING DEFAULTS")):
            conn.execute("DROP TABLE IF EXISTS fills_plain")
            conn.execute(f"CREATE TABLE fills_plain (LIKE fills {shape})")
            checkpoint(database_url)
            started = time.perf_counter()
            with conn.cursor().copy(f"COPY fills_plain ({columns}) FROM STDIN") as copy:
                for i in range(0, len(data), 1 << 20):
                    copy.write(data[i : i + (1 << 20)])
            elapsed = time.perf_counter() - started
            row = conn.execute("SELECT count(*) FROM fills_plain").fetchone()
            timed[name] = (int(row[0]) if row else 0, elapsed)
        conn.execute("DROP TABLE fills_plain")
    return timed


async def cleanup(redis_url: str, ids: list[str]) -> None:
    redis = create_client(redis_url)
    cleaner = SessionIds()
    cleaner.made = ids
    await cleaner.cleanup(redis)
    await redis.aclose()


def fill_count(database_url: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM fills").fetchone()
    return int(row[0]) if row else 0


def reset(database_url: str) -> None:
    """Empty the warehouse for another round (the sessions stay registered, as not migrated)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE fills, orders, session_pair_stats, migration_rejects")
        conn.execute("UPDATE sessions SET migrated_at = NULL")


def main(sessions: int, pairs: int, fills: int, rounds: int) -> None:
    logs.configure("ERROR", "console")
    measured: list[dict[str, float]] = []
    cpu: list[dict[str, float | None]] = []
    compile_bytecode()
    with bench_servers() as (redis_url, database_url):
        started = time.perf_counter()
        ids = asyncio.run(generate(redis_url, database_url, sessions, pairs, fills))
        generated = time.perf_counter() - started
        try:
            for n in range(rounds):
                if n:
                    reset(database_url)
                load = os.getloadavg()[0]  # others' work on the machine shows here
                ran = migrate(redis_url, database_url)
                wall, peak_kb, report = ran.wall, ran.peak_kb, json.loads(ran.stdout)
                inserted = sum(int(s["fills_inserted"]) for s in report["sessions"])  # type: ignore[index, union-attr, call-overload]
                verified = sum(bool(s["verified"]) for s in report["sessions"])  # type: ignore[index, union-attr]
                copies = plain_copy(database_url)
                reset(database_url)
                scripted = run_script(redis_url, database_url)
                script_s = scripted.wall
                if (copied := fill_count(database_url)) != inserted:
                    raise RuntimeError(f"the script copied {copied} fills, not {inserted}")
                measured.append({
                    "migrate_s": wall,
                    "copy_s": copies["same_shape"][1],
                    "bare_s": copies["bare"][1],
                    "script_s": script_s,
                    "ratio": copies["same_shape"][1] / wall,  # the same rows both ways
                    "ratio_to_script": wall / script_s,
                    "load_average": load,
                })  # fmt: skip
                cpu.append({
                    f"{name}_{part}": None if value is None else round(value, 2)
                    for name, r in (("migrate", ran), ("script", scripted))
                    for part, value in (("self", r.cpu), ("postgres", r.postgres_cpu),
                                        ("redis", r.redis_cpu),
                                        ("postgres_autovacuum", r.autovacuum_cpu))
                })  # fmt: skip
        finally:
            asyncio.run(cleanup(redis_url, ids))
        wall = statistics.median(m["migrate_s"] for m in measured)
        copy_s = statistics.median(m["copy_s"] for m in measured)
        bare_s = statistics.median(m["bare_s"] for m in measured)
        script_s = statistics.median(m["script_s"] for m in measured)
        print(json.dumps({
        "bench": "migration",
        "sessions": sessions,
        "pairs": pairs,
        "fills": inserted,
        "sessions_verified": verified,
        "generate_s": round(generated, 2),
        "rounds": rounds,
        "migrate_wall_s": round(wall, 2),
        "fills_per_second": round(inserted / wall),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "plain_copy_s": round(copy_s, 2),
        "plain_copy_rows_per_second": round(inserted / copy_s),
        "ratio_to_plain_copy": round(copy_s / wall, 3),
        "bare_copy_s": round(bare_s, 2),
        "ratio_to_bare_copy": round(bare_s / wall, 3),
        "script_s": round(script_s, 2),
        "ratio_to_script": round(wall / script_s, 3),
        "cpu_s": cpu,
        "each_round": [{k: round(v, 3) for k, v in m.items()} for m in measured],
        }))  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--fills", type=int, default=1000, help="fills per (session, pair)")
    parser.add_argument("--rounds", type=int, default=3, help="figures are the rounds' medians")
    a = parser.parse_args()
    main(a.sessions, a.pairs, a.fills, a.rounds)
