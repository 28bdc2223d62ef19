"""``mmops serve``: the long-running process.

Settlement every ``MMOPS_SETTLEMENT_INTERVAL`` and migration every ``MMOPS_MIGRATION_INTERVAL``
seconds on APScheduler (with a little jitter; ``max_instances=1``, so a job never runs twice at
once in this process; across processes the settlement locks share the sessions out), the HTTP
endpoints on uvicorn, and alerts. The HTTP address is bound first (:func:`listen`), before any
server or job starts, so an address in use is one ConfigurationError (exit 2). On SIGTERM or
SIGINT uvicorn stops serving, the scheduler stops starting runs, a running job gets
``MMOPS_SHUTDOWN_GRACE`` seconds to finish (a job stopped after that releases its locks on the
way out), and the process exits 0.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import uvicorn
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from mmops import logs
from mmops.adapters.postgres import schema
from mmops.adapters.postgres.pool import ping
from mmops.bootstrap import (
    Runtime,
    Urls,
    build_migration,
    build_reconciler,
    build_settlement,
    open_exchange,
    open_runtime,
    ping_redis,
)
from mmops.config import Settings
from mmops.entrypoints.http import Probes, create_app
from mmops.entrypoints.metrics import Metrics
from mmops.entrypoints.status_view import collect_status
from mmops.entrypoints.watchers import Watchers, open_watchers
from mmops.errors import (
    RECOVERABLE,
    AuthenticationFailed,
    ConfigurationError,
    MmopsError,
    StoreUnavailable,
)
from mmops.ports import Exchange
from mmops.services.alerts import Alerts
from mmops.services.coverage import CoverageService
from mmops.services.migration import MigrationService
from mmops.services.settlement import SessionResult, SettlementService

log = logs.get_logger("mmops.serve")

SCHEMA_CHECK_TTL = 30.0  # seconds a schema check is trusted by /readyz
STATUS_TIMEOUT = 4.0  # seconds /status may take before it answers 503


class Daemon:
    def __init__(self, rt: Runtime, exchange: Exchange) -> None:
        self.rt = rt
        self.settings: Settings = rt.settings
        self.exchange = exchange
        self.metrics = Metrics()
        self.alerts = Alerts(rt.notifier)
        self.settlement: SettlementService = build_settlement(
            rt, exchange, dry_run=self.settings.dry_run
        )
        self.migration: MigrationService = build_migration(rt)
        self.scheduler = AsyncIOScheduler(timezone=UTC)
        self.running: set[asyncio.Task[Any]] = set()
        self.stopping = False
        self.last_settlement_ok = time.time()
        self.crashed: dict[str, str] = {}  # job → error of its last run, if that run crashed
        self._schema_ok: tuple[float, bool] = (0.0, False)

    # -- schedules ------------------------------------------------------------------------

    def schedule(self) -> None:
        s = self.settings
        soon = datetime.now(UTC) + timedelta(seconds=1)
        jobs: list[tuple[str, int, Callable[[], Awaitable[None]]]] = [
            ("settlement", s.settlement_interval, self.settle),
            ("migration", s.migration_interval, self.migrate),
            ("staleness", s.settlement_interval, self.check_stale),
        ]
        for name, interval, job in jobs:
            self.scheduler.add_job(
                self._guarded(name, job),
                IntervalTrigger(seconds=interval, jitter=min(15, interval // 10)),
                id=name,
                max_instances=1,
                coalesce=True,
                next_run_time=soon,
            )
        self.scheduler.start()

    def _guarded(
        self, name: str, job: Callable[[], Awaitable[None]]
    ) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            if self.stopping:
                return
            task = asyncio.current_task()
            if task is not None:
                self.running.add(task)
            try:
                await job()
            except asyncio.CancelledError:
                if not self.stopping:
                    raise
                # Stopped by `stop` after the grace period: said once, not as a traceback.
                log.warning("job.stopped", job=name, grace=self.settings.shutdown_grace)
            except Exception as e:  # a job never takes the daemon down; it is logged and alerted
                error = logs.scrub(f"{type(e).__name__}: {e}")
                log.error("job.crashed", job=name, error=error)
                self.crashed[name] = error
                await self.alerts.update(f"{name}_crashed", True, error)
            else:
                self.crashed.pop(name, None)
                await self.alerts.update(f"{name}_crashed", False)
            finally:
                if task is not None:
                    self.running.discard(task)

        return run

    # -- jobs -----------------------------------------------------------------------------

    async def settle(self) -> None:
        started = time.perf_counter()
        results: list[SessionResult] = []
        error: MmopsError | None = None
        try:
            results = await self.settlement.run(scheduled=True)
        except MmopsError as e:
            error = e
        failed = [r for r in results if not r.ok]
        ok = error is None and not failed
        self.metrics.job("settlement", time.perf_counter() - started, ok, time.time())
        self.metrics.settlement(results)
        if ok:
            self.last_settlement_ok = time.time()
        if error is not None:
            detail = f"{type(error).__name__}: {error}"
        else:
            detail = "; ".join(f"{r.session_id}: {r.state} {r.errors()[:3]}" for r in failed)
        await self.alerts.update("settlement_failed", not ok, detail)
        # The exchange refused the key (a store refusing its password is settlement_failed only).
        await self.alerts.update("exchange_auth", isinstance(error, AuthenticationFailed), detail)
        await self._coverage_metrics(results)

    async def check_stale(self) -> None:
        limit = 2 * self.settings.settlement_interval
        age = time.time() - self.last_settlement_ok
        await self.alerts.update(
            "settlement_stale", age > limit, f"no successful settlement for {age:.0f} s"
        )

    async def migrate(self) -> None:
        started = time.perf_counter()
        error = None
        results = []
        try:
            results = await self.migration.run()
            lag = await self.rt.warehouse.migration_lag_seconds()
        except MmopsError as e:
            error, lag = f"{type(e).__name__}: {e}", None
        bad = [r for r in results if not r.ok]
        ok = error is None and not bad
        self.metrics.job("migration", time.perf_counter() - started, ok, time.time())
        self.metrics.migration(results, lag)
        detail = error or "; ".join(
            f"{r.session_id}: {r.state} {r.error or ''} {r.mismatches()}" for r in bad
        )
        await self.alerts.update("migration_failed", not ok, detail)

    async def _coverage_metrics(self, results: list[SessionResult]) -> None:
        try:
            markets = await self.exchange.markets()  # cached by live adapters
        except RECOVERABLE as e:
            log.warning("metrics.coverage_skipped", error=str(e))
            return
        # Measured against the exchange: a read-only reconciliation, nothing changed.
        reconciler = build_reconciler(self.rt, self.exchange, dry_run=True)
        coverage = CoverageService(self.rt.positions, reconciler)
        now = self.rt.clock.now()
        for result in results:
            session = await self.rt.registry.get(result.session_id)
            if session is None:
                continue
            pairs = [p for p in session.pairs if p in markets]
            try:
                covered = await coverage.session(session, markets, now, pairs)
            except RECOVERABLE as e:
                log.warning("metrics.coverage_skipped", session=session.id, error=str(e))
                continue
            self.metrics.coverage_of(session.id, covered)

    # -- probes ---------------------------------------------------------------------------

    def alive(self) -> bool:
        return not self.stopping and bool(self.scheduler.running)

    async def readiness(self) -> list[str]:
        """Why the daemon is not ready: Redis (every node of a cluster) or PostgreSQL not
        answering, the schema behind, or a job whose last run crashed."""
        reasons = [f"job {name} crashed: {error}" for name, error in sorted(self.crashed.items())]
        try:
            await ping_redis(self.rt.redis)
        except MmopsError as e:
            reasons.append(logs.scrub(str(e)))
        try:
            await ping(self.rt.pool, timeout=3)
        except MmopsError as e:  # StoreUnavailable; "authentication failed: …" if refused
            reasons.append(logs.scrub(str(e)))
        except Exception as e:  # any other failure to reach PostgreSQL: not ready either
            reasons.append(logs.scrub(f"PostgreSQL is unavailable: {type(e).__name__}: {e}"))
        else:
            if not await self._schema_current():
                reasons.append(f"schema is not at {schema.latest_id()}: run `mmops db upgrade`")
        return reasons

    async def _schema_current(self) -> bool:
        checked_at, ok = self._schema_ok
        if time.monotonic() - checked_at > SCHEMA_CHECK_TTL or not ok:
            try:
                ok = await asyncio.to_thread(schema.is_current, self.rt.urls.database)
            except MmopsError:
                ok = False
            self._schema_ok = (time.monotonic(), ok)
        return ok

    async def status(self) -> list[dict[str, Any]]:
        """The status view, or StoreUnavailable within STATUS_TIMEOUT if a store is down."""
        try:
            async with asyncio.timeout(STATUS_TIMEOUT):
                return await collect_status(self.rt)
        except TimeoutError:
            raise StoreUnavailable(
                "Redis or PostgreSQL", f"no answer within {STATUS_TIMEOUT:g} s"
            ) from None

    # -- stopping -------------------------------------------------------------------------

    async def stop(self) -> None:
        """Start nothing new; give running jobs the grace period; then stop them."""
        self.stopping = True
        # Pause, not shut down, first: APScheduler's asyncio executor cancels the jobs still
        # running when it shuts down, which would cut the grace period to nothing.
        self.scheduler.pause()
        running = set(self.running)
        if running:
            log.info("serve.draining", jobs=len(running), grace=self.settings.shutdown_grace)
            _, late = await asyncio.wait(running, timeout=self.settings.shutdown_grace)
            for task in late:
                task.cancel()  # its `async with` blocks release the locks it holds
            if late:
                await asyncio.wait(late, timeout=10)
        self.scheduler.shutdown(wait=False)


def listen(host: str, port: int) -> socket.socket:
    """The daemon's listening socket, bound before anything else starts and handed to uvicorn
    (so nothing can take the address in between).

    Raises ConfigurationError naming the address and its settings when it cannot be bound:
    in use, not an address of this host, or a privileged port.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)  # uvicorn's default backlog
    except OSError as e:
        sock.close()
        shown = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        why = (e.strerror or str(e)).lower()  # "address already in use", "permission denied"
        raise ConfigurationError(
            f"cannot listen on {shown}: {why}; set MMOPS_HTTP_HOST / MMOPS_HTTP_PORT to a free "
            "address of this host, or stop what holds it"
        ) from None
    return sock


async def serve(settings: Settings, urls: Urls, listener: socket.socket) -> None:
    """Serve HTTP on ``listener`` (see :func:`listen`) and run the jobs until SIGTERM or
    SIGINT, then stop gracefully."""
    async with (
        open_runtime(settings, urls, require=False) as rt,
        open_exchange(rt, dry_run=settings.dry_run) as exchange,
    ):
        daemon = Daemon(rt, exchange)
        async with open_watchers(
            rt, exchange, daemon.settlement, feed=settings.feed, observe=daemon.metrics.settlement
        ) as w:
            await _serve(daemon, w, listener)


async def _serve(daemon: Daemon, w: Watchers, listener: socket.socket) -> None:
    """HTTP, the schedules and the exchange-truth loops, until a signal stops uvicorn."""
    settings = daemon.settings
    probes = Probes(
        daemon.alive, daemon.readiness, daemon.metrics.render, daemon.status, daemon.rt.pool
    )
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(probes),  # host and port: the listener's
            log_config=None,
            access_log=False,
            lifespan="off",
        )
    )
    daemon.schedule()
    log.info(
        "serve.started",
        host=settings.http_host,
        port=settings.http_port,
        settlement_interval=settings.settlement_interval,
        migration_interval=settings.migration_interval,
        dry_run=settings.dry_run,
    )
    # uvicorn captures SIGTERM/SIGINT while it serves and raises them again when it stops;
    # these no-op handlers receive that re-raise so the process can drain and exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    stop_watching = asyncio.Event()
    watching = asyncio.create_task(w.run(stop_watching))
    try:
        await server.serve(sockets=[listener])
    finally:
        stop_watching.set()
        await daemon.stop()
        await w.stopped(watching)
        log.info("serve.stopped")
