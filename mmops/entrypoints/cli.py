"""The ``mmops`` command line: parse, call one service, print (``--json`` for machines).

Exit codes: 0 all went well, 1 a run failed or found problems, 2 bad configuration.
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

app = typer.Typer(
    name="mmops",
    help="Back office of a multi-pair crypto market maker.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


@dataclass(slots=True)
class Context:
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


_ctx = Context()


def ctx() -> Context:
    return _ctx


@app.callback()
def _root(
    config: Annotated[
        Path | None,
        typer.Option("--config", help="A TOML settings file (also MMOPS_CONFIG_FILE)."),
    ] = None,
) -> None:
    _ctx.config_file = config


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


def require_current_schema(database_url: str) -> None:
    """Raise ConfigurationError unless every schema migration is applied."""
    from mmops.adapters.postgres import schema

    if not schema.is_current(database_url):
        raise ConfigurationError("schema is not at the latest migration: run `mmops db upgrade`")


def run_async(coro: Any) -> Any:
    return asyncio.run(coro)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def main() -> None:
    from mmops.entrypoints import (  # noqa: F401 - registers the commands
        cli_db,
        cli_migrate,
        cli_paper,
        cli_serve,
        cli_settle,
        cli_status,
    )

    try:
        app()
    finally:
        for cleanup in reversed(_ctx.cleanups):
            cleanup()
