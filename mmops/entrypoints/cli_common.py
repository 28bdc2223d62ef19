"""What every ``mmops`` command shares: the per-invocation :class:`Context` (settings, servers,
URLs, built on first use and closed when the command ends), the consoles, error handling and
the schema guards. The commands receive the Context from typer (``ctx.obj``, set by the root
callback in ``cli.py``); nothing here is module-level state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from mmops import bootstrap
from mmops.adapters.embedded import EmbeddedServers
from mmops.bootstrap import Urls, configure_logging, resolve_urls
from mmops.config import Settings, load_settings
from mmops.errors import ConfigurationError, MmopsError

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


@dataclass(slots=True)
class Context:
    """One invocation's settings and servers, built on first use (a command that needs no
    settings reads no environment) and released by :meth:`close`."""

    config_file: Path | None = None
    _settings: Settings | None = None
    _embedded: EmbeddedServers | None = None
    _urls: Urls | None = None
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config_file)
            configure_logging(self._settings)
        return self._settings

    @property
    def embedded(self) -> EmbeddedServers:
        if self._embedded is None:
            self._embedded = EmbeddedServers(self.settings.data_dir)
            self.cleanups.append(self._embedded.close)
        return self._embedded

    @property
    def urls(self) -> Urls:
        if self._urls is None:
            self._urls = resolve_urls(self.settings, self.embedded)
        return self._urls

    @property
    def database_url(self) -> str:
        """The database URL alone (starts no embedded Redis)."""
        if self._urls is not None:
            return self._urls.database
        return bootstrap.database_url(self.settings, self.embedded)

    def close(self) -> None:
        """Stop what this invocation started (embedded servers), newest first."""
        while self.cleanups:
            self.cleanups.pop()()


def context_of(ctx: typer.Context) -> Context:
    """The invocation's Context, as the root callback stored it."""
    obj = ctx.find_object(Context)
    if obj is None:  # a command invoked without the root callback: a programming error
        raise RuntimeError("no mmops Context: commands run under the app built by cli.build_app")
    return obj


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Turn mmops errors into a one-line message and the documented exit code."""
    try:
        yield
    except ConfigurationError as e:
        err_console.print(f"[bold red]configuration error:[/] {e}")
        raise typer.Exit(2) from None
    except MmopsError as e:
        err_console.print(f"[bold red]error:[/] {e}")
        raise typer.Exit(1) from None


def refuse_outdated_schema(database_url: str) -> None:
    """Raise ConfigurationError unless every schema migration is applied (``settle``,
    ``migrate``, ``status``, ``verify-coverage``, ``db verify``: a person upgrades)."""
    from mmops.adapters.postgres import schema

    if not schema.is_current(database_url):
        raise ConfigurationError("schema is not at the latest migration: run `mmops db upgrade`")


def upgrade_outdated_schema(database_url: str) -> None:
    """Apply every pending schema migration (``demo`` and ``sim`` set their database up)."""
    from mmops.adapters.postgres import schema

    if not schema.is_current(database_url):
        schema.upgrade(database_url)


def run_async(coro: Any) -> Any:
    return asyncio.run(coro)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
