"""The ``mmops`` command line: parse, call one service, print (``--json`` for machines).

Exit codes: 0 all went well, 1 a run failed or found problems, 2 bad configuration.

This module is the one place commands are registered (:func:`build_app`); the ``cli_*``
modules define them and import nothing from here. Each invocation gets its own
:class:`~mmops.entrypoints.cli_common.Context`, made by the root callback and handed to the
commands through typer's context (``ctx.obj``); it is closed when the command ends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mmops.entrypoints import (
    cli_db,
    cli_migrate,
    cli_paper,
    cli_reconcile,
    cli_report,
    cli_serve,
    cli_settle,
    cli_status,
    cli_tiers,
    cli_watch,
)
from mmops.entrypoints.cli_common import Context


def _root(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="A TOML settings file (also MMOPS_CONFIG_FILE)."),
    ] = None,
) -> None:
    context = Context(config_file=config)
    ctx.obj = context
    ctx.call_on_close(context.close)


def build_app() -> typer.Typer:
    """The ``mmops`` application with every command (in the order ``--help`` lists them)."""
    app = typer.Typer(
        name="mmops",
        help="Back office of a multi-pair crypto market maker.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    app.callback()(_root)
    app.add_typer(cli_db.db, name="db")
    app.command("migrate")(cli_migrate.migrate)
    app.command("demo")(cli_paper.demo)
    app.command("sim")(cli_paper.sim)
    app.command("verify-coverage")(cli_paper.verify_coverage)
    app.command("serve")(cli_serve.serve)
    app.command("settle")(cli_settle.settle)
    app.command("status")(cli_status.status)
    app.command("reconcile")(cli_reconcile.reconcile)
    app.command("watch")(cli_watch.watch)
    app.command("report")(cli_report.report)
    app.add_typer(cli_tiers.tiers, name="tiers")
    return app


def main() -> None:
    build_app()()
