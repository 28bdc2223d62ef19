"""The one composition root: settings → servers → adapters → services.

Nothing else in mmops opens a connection, reads the environment or builds an adapter.
:func:`resolve_urls` decides between the configured servers and the embedded ones (and says so
in one log line); :func:`open_runtime` opens the Redis client and the PostgreSQL pool in one
place and closes them in one place; :func:`open_exchange` and :func:`open_paper_venue` hand out
an exchange for the length of an ``async with`` and close it at its end.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from psycopg_pool import AsyncConnectionPool

from mmops import logs
from mmops.adapters.clock import SystemClock
from mmops.adapters.embedded import EmbeddedServers
from mmops.adapters.notify import AppriseNotifier
from mmops.adapters.paper.exchange import PaperExchange
from mmops.adapters.paper.faults import FaultPlan
from mmops.adapters.paper.feed import PaperFeed
from mmops.adapters.postgres.leases import PostgresWorkLeases
from mmops.adapters.postgres.pool import create_pool, open_pool
from mmops.adapters.postgres.sessions import SessionRepository
from mmops.adapters.postgres.settlement_runs import SettlementRunRepository
from mmops.adapters.postgres.warehouse import Warehouse
from mmops.adapters.redis.client import Redis, create_client, ping_nodes
from mmops.adapters.redis.events import FeedCursorStore, FillEventStream
from mmops.adapters.redis.locks import Attempts, SettlementLocks
from mmops.adapters.redis.ops import OpsStore
from mmops.adapters.redis.prices import PriceStore
from mmops.adapters.redis.reservations import BalanceReservations
from mmops.adapters.redis.store import FillStore, OrderStore, PositionStore, SessionStore
from mmops.config import Settings, redact_url
from mmops.domain.models import Market
from mmops.domain.pnl import StopLossThresholds
from mmops.domain.ratelimit import TradingCounter
from mmops.domain.records import RunState
from mmops.errors import ConfigurationError
from mmops.ports import Clock, Exchange, ExecutionFeed
from mmops.services.feed import FeedService
from mmops.services.migration import MigrationService
from mmops.services.reconcile import Reconciler
from mmops.services.reprice import Repricer
from mmops.services.sessions import SessionRegistry, WorkSharing
from mmops.services.settlement import SessionResult, SettlementService
from mmops.services.stoploss import StopLossService
from mmops.services.take_profit import TakeProfitService
from mmops.services.trigger import SettleTrigger

if TYPE_CHECKING:
    from mmops.adapters.exchanges.ccxt_exchange import CcxtExchange
    from mmops.services.ingest import IngestService

log = logs.get_logger("mmops.bootstrap")

UNLIMITED = TradingCounter(threshold=1e12, decay=1e12)  # MMOPS_PAPER_COUNTER=off


@dataclass(frozen=True, slots=True)
class Urls:
    redis: str
    database: str


def resolve_urls(settings: Settings, embedded: EmbeddedServers) -> Urls:
    """The configured URLs, or those of embedded servers started under the data dir."""
    return Urls(redis_url(settings, embedded), database_url(settings, embedded))


def redis_url(settings: Settings, embedded: EmbeddedServers) -> str:
    if settings.redis_url is not None:
        return settings.redis_url.get_secret_value()
    url = embedded.redis_url()
    log.info("embedded.redis", data_dir=str(embedded.data_dir.resolve()))
    return url


def database_url(settings: Settings, embedded: EmbeddedServers) -> str:
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    url = embedded.database_url()
    log.info("embedded.postgres", data_dir=str(embedded.data_dir.resolve()))
    return url


@dataclass(frozen=True, slots=True)
class Runtime:
    """Everything a command needs, built once."""

    settings: Settings
    urls: Urls
    redis: Redis
    pool: AsyncConnectionPool
    sessions: SessionStore
    orders: OrderStore
    fills: FillStore
    positions: PositionStore
    session_records: SessionRepository
    registry: SessionRegistry
    clock: SystemClock
    ops: OpsStore
    warehouse: Warehouse
    notifier: AppriseNotifier
    leases: PostgresWorkLeases
    prices: PriceStore  # settlement's tickers and the paper loop's fill path


async def ping_redis(redis: Redis) -> None:
    """Raise StoreUnavailable (naming Redis) unless the server (every node of a cluster)
    answers."""
    await ping_nodes(redis)


@contextlib.asynccontextmanager
async def open_runtime(
    settings: Settings, urls: Urls, *, require: bool = True
) -> AsyncIterator[Runtime]:
    """Open Redis and PostgreSQL and close both on exit.

    With ``require`` (commands) both must answer now, else StoreUnavailable names the one that
    does not; without it (the daemon) the pool connects in the background, so the process can
    start, report not-ready and recover when the server comes back.
    """
    redis = create_client(urls.redis, cluster=settings.redis_cluster)
    pool = create_pool(urls.database, settings.db_pool_max_size)
    try:
        if require:
            await ping_redis(redis)
            await open_pool(pool)
        else:
            await pool.open(wait=False)
        log.debug("runtime.opened", redis=redact_url(urls.redis))
        sessions = SessionStore(redis)
        records = SessionRepository(pool)
        yield Runtime(
            settings=settings,
            urls=urls,
            redis=redis,
            pool=pool,
            sessions=sessions,
            orders=OrderStore(redis),
            fills=FillStore(redis, settings.fill_events_stream),
            positions=PositionStore(redis),
            session_records=records,
            registry=SessionRegistry(sessions, records),
            clock=SystemClock(),
            ops=OpsStore(redis),
            warehouse=Warehouse(pool),
            notifier=AppriseNotifier(settings.alert_url_list()),
            leases=PostgresWorkLeases(pool),
            prices=PriceStore(redis),
        )
    finally:
        await pool.close()
        await redis.aclose()


def configure_logging(settings: Settings) -> None:
    logs.register_secrets(settings.secrets())
    logs.configure(settings.log_level, settings.log_format)


def worker_name(settings: Settings) -> str:
    return settings.worker_id or f"{socket.gethostname()}:{os.getpid()}"


@contextlib.asynccontextmanager
async def open_exchange(rt: Runtime, *, dry_run: bool) -> AsyncIterator[Exchange]:
    """The configured exchange, closed when the block ends: the paper venue
    (``MMOPS_PAPER_VENUE``, with ``MMOPS_PAPER_FAULTS``) or a live ccxt exchange (dry-run
    places nothing on a live venue). Raises ConfigurationError for a live exchange without
    API credentials."""
    async with _build_exchange(rt.settings, rt.redis, rt.clock, dry_run) as exchange:
        yield exchange


@contextlib.asynccontextmanager
async def open_paper_venue(
    rt: Runtime,
    clock: Clock,
    *,
    venue: str | None = None,
    seed: int | None = None,
    price_origin: float = 0.0,
) -> AsyncIterator[PaperExchange]:
    """A paper venue for the trading loop on ``clock``, closed when the block ends: the
    configured one (``MMOPS_PAPER_VENUE``, ``MMOPS_PAPER_SEED``) unless ``venue`` / ``seed``
    name another. It injects no ``MMOPS_PAPER_FAULTS``: they are for settlement's benchmarks
    and reliability tests, and the trading loop would stop on them."""
    async with PaperExchange(
        rt.redis,
        clock,
        venue=rt.settings.paper_venue if venue is None else venue,
        seed=rt.settings.paper_seed if seed is None else seed,
        price_origin=price_origin,
    ) as exchange:
        yield exchange


def _build_exchange(
    settings: Settings, redis: Redis, clock: Clock, dry_run: bool
) -> PaperExchange | CcxtExchange:
    if settings.exchange == "paper":
        return PaperExchange(
            redis,
            clock,
            venue=settings.paper_venue,
            seed=settings.paper_seed,
            faults=FaultPlan.from_dict(settings.paper_faults),
            counter=UNLIMITED if settings.paper_counter == "off" else None,
        )
    if settings.api_key is None or settings.api_secret is None:
        raise ConfigurationError(
            f"MMOPS_EXCHANGE={settings.exchange!r} is live: set MMOPS_API_KEY and MMOPS_API_SECRET"
        )
    from mmops.adapters.exchanges.ccxt_exchange import CcxtExchange  # live venues only

    return CcxtExchange(
        settings.exchange,
        settings.api_key.get_secret_value(),
        settings.api_secret.get_secret_value(),
        base_url=settings.exchange_url,
        dry_run=dry_run,
        tier=settings.kraken_tier,
    )


async def check_tier_pairs(settings: Settings, exchange: Exchange) -> None:
    """Refuse per-pair tiers for a pair the exchange does not list (a typo would silently
    leave that pair on the default tiers). The paper venue's pairs are checked with the
    settings; a live venue's only here, once its markets are known."""
    if not settings.tp_tiers_by_pair:
        return
    markets = await exchange.markets()
    if unknown := sorted(set(settings.tp_tiers_by_pair) - set(markets)):
        raise ConfigurationError(
            f"MMOPS_TP_TIERS_BY_PAIR: {settings.exchange} lists no pair {', '.join(unknown)}"
        )


async def exchange_markets(rt: Runtime) -> dict[str, Market]:
    """The configured exchange's markets (for coverage views); places nothing."""
    async with open_exchange(rt, dry_run=True) as exchange:
        return await exchange.markets()


def build_settlement(
    rt: Runtime, exchange: Exchange, *, dry_run: bool, clock: Clock | None = None
) -> SettlementService:
    """The settlement service with everything it needs, from one runtime."""
    s = rt.settings
    clock = clock or rt.clock
    tiers = s.tier_policy()
    take_profits = TakeProfitService(
        positions=rt.positions,
        attempts=Attempts(rt.redis, s.tp_attempt_ttl),
        exchange=exchange,
        tiers=tiers,
        clock=clock,
        reserve=s.tp_reserve,
        dry_run=dry_run,
        deadline=timedelta(seconds=s.tp_deadline),
        clock_skew=timedelta(seconds=s.tp_clock_skew),
        reservations=BalanceReservations(rt.redis) if s.balance_reservations else None,
        account=account_name(exchange),
        reservation_ttl=timedelta(seconds=s.balance_reservation_ttl),
        pending_ttl=timedelta(seconds=s.settlement_lock_ttl + s.tp_deadline + s.tp_clock_skew),
    )
    stoploss = StopLossService(
        fills=rt.fills,
        positions=rt.positions,
        records=rt.ops,
        registry=rt.registry,
        exchange=exchange,
        notifier=rt.notifier,
        thresholds=StopLossThresholds(s.stoploss_warn, s.stoploss_halt, s.stoploss_flatten),
        dry_run=dry_run,
        clock=clock,
        deadline=timedelta(seconds=s.tp_deadline),
        orders=rt.orders,
    )
    repricer = (
        Repricer(positions=rt.positions, exchange=exchange, tiers=tiers, clock=clock)
        if s.tp_reprice
        else None
    )
    return SettlementService(
        registry=rt.registry,
        positions=rt.positions,
        records=rt.ops,
        runs=SettlementRunRepository(rt.pool),
        locks=SettlementLocks(rt.redis, s.settlement_lock_ttl),
        exchange=exchange,
        take_profits=take_profits,
        stoploss=stoploss,
        repricer=repricer,
        clock=clock,
        hours_back=s.settlement_hours_back,
        session_limit=s.settlement_session_limit,
        worker=worker_name(s),
        reconciler=build_reconciler(rt, exchange, dry_run=dry_run),
        sharing=WorkSharing(
            leases=rt.leases,
            interval=timedelta(seconds=s.settlement_interval),
            ttl=timedelta(seconds=s.settlement_lease_ttl or 2 * s.settlement_lock_ttl),
            batch=s.settlement_claim_batch,
            stale_after=timedelta(seconds=s.session_stale_after),
            stale_every=s.session_stale_every,
        ),
        group_pairs=s.settle_group_pairs,
        prices=rt.prices,
    )


def account_name(exchange: Exchange) -> str:
    """The account's stable, non-secret name (the adapter's ``account``, else its name)."""
    return str(getattr(exchange, "account", None) or exchange.name)


def build_reconciler(rt: Runtime, exchange: Exchange, *, dry_run: bool) -> Reconciler:
    """Reconciliation of believed take-profits with ``exchange`` (dry-run: reports only),
    holding ``lock:settlement:{S}`` when run on its own (``Reconciler.locked``)."""
    return Reconciler(
        positions=rt.positions,
        orders=rt.orders,
        order_writer=rt.orders,
        fills=rt.fills,
        exchange=exchange,
        dry_run=dry_run,
        locks=SettlementLocks(rt.redis, rt.settings.settlement_lock_ttl),
        group_pairs=rt.settings.settle_group_pairs,
    )


def build_migration(rt: Runtime, batch_size: int | None = None) -> MigrationService:
    s = rt.settings
    return MigrationService(
        live=rt.sessions,
        records=rt.session_records,
        orders=rt.orders,
        fills=rt.fills,
        warehouse=rt.warehouse,
        marks=rt.ops,
        clock=rt.clock,
        batch_size=batch_size or s.migration_batch_size,
        retention_seconds=s.migration_retention_grace if s.migration_retention else None,
        leases=rt.leases,
        worker=worker_name(s),
        prices=rt.prices,
        take_profits=rt.positions,
    )


@contextlib.asynccontextmanager
async def open_feed(rt: Runtime, exchange: Exchange) -> AsyncIterator[ExecutionFeed]:
    """The account's execution feed for ``exchange``, closed when the block ends: the paper
    venue's trade list, or Kraken's WebSocket v2 ``executions`` with its REST history.
    Raises ConfigurationError for a live exchange the feed does not speak."""
    if isinstance(exchange, PaperExchange):
        yield PaperFeed(exchange)
        return
    from mmops.adapters.exchanges.ccxt_exchange import CcxtExchange  # live venues only
    from mmops.adapters.exchanges.kraken_feed import KrakenFeed

    if not isinstance(exchange, CcxtExchange) or exchange.name != "kraken":
        raise ConfigurationError(
            f"MMOPS_EXCHANGE={rt.settings.exchange!r}: the fill feed speaks Kraken and the"
            " paper venue only (MMOPS_FEED=false, or `watch --no-feed`, says so quietly)"
        )
    feed = KrakenFeed(exchange, ws_url=rt.settings.feed_ws_url)
    try:
        yield feed
    finally:
        await feed.close()


FEED_SESSION_LIMIT = 1000


def build_feed(
    rt: Runtime, exchange: Exchange, feed: ExecutionFeed, clock: Clock | None = None
) -> FeedService:
    """The fill feed; ``clock`` (default the runtime's) is what "recent sessions" are measured
    against: a simulated clock for a paper run on simulated time."""
    s = rt.settings
    return FeedService(
        feed=feed,
        cursors=FeedCursorStore(rt.redis),
        registry=rt.registry,
        orders=rt.orders,
        fills=rt.fills,
        exchange=exchange,
        clock=clock or rt.clock,
        hours_back=s.settlement_hours_back,
        # Attribution looks through every recent session, not one run's share of them.
        session_limit=max(FEED_SESSION_LIMIT, s.settlement_session_limit),
        quiet=float(s.feed_quiet),
        attribution=s.feed_attribution,
        grace=float(s.feed_grace),
    )


def build_trigger(
    rt: Runtime,
    settlement: SettlementService,
    observe: Callable[[list[SessionResult]], None] | None = None,
) -> SettleTrigger:
    """The settle trigger: new buy fills settle their (session, pair) after the debounce;
    ``observe`` sees each run's results (the daemon's metrics)."""

    async def settle(session_id: str, pairs: Sequence[str]) -> list[RunState]:
        results = await settlement.run(session_id, pairs)
        if observe is not None:
            observe(results)
        return [r.state for r in results]

    return SettleTrigger(
        FillEventStream(rt.redis, rt.settings.fill_events_stream),
        settle,
        consumer=worker_name(rt.settings),
        debounce=rt.settings.settle_debounce,
    )


def build_ingest(rt: Runtime) -> IngestService:
    """The ingest consumer of ``MMOPS_INGEST_STREAM`` (docs/INGEST.md), from one runtime."""
    from mmops.adapters.redis.ingest import RedisIngestStream
    from mmops.services.ingest import IngestService

    s = rt.settings
    stream = RedisIngestStream(
        rt.redis, s.ingest_stream, claim_after_ms=s.ingest_claim_after * 1000
    )
    return IngestService(
        stream=stream,
        sessions=rt.registry,
        live=rt.sessions,
        orders=rt.orders,
        fills=rt.fills,
        rejects=rt.warehouse,
        clock=rt.clock,
        exchange=s.exchange,
    )


async def reset_paper_venue(rt: Runtime, venue: PaperExchange) -> None:
    """Empty a paper venue and forget the balance its account had reserved: the demo's venue
    starts anew each run, and no order of the old one is left to hold anything."""
    await venue.reset()
    await BalanceReservations(rt.redis).clear(venue.account)
