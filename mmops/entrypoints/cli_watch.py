"""``mmops watch``: the exchange-truth loops in the foreground (they also run inside serve)."""

from __future__ import annotations

import asyncio
import signal
from typing import Annotated, Any

import typer

from mmops.bootstrap import build_settlement, open_exchange, open_runtime
from mmops.entrypoints.cli_common import (
    JsonOption,
    console,
    context_of,
    emit_json,
    handled,
    refuse_outdated_schema,
    run_async,
)
from mmops.entrypoints.watchers import open_watchers


def watch(
    ctx: typer.Context,
    seconds: Annotated[
        float | None, typer.Option(min=0.1, help="Stop after this many seconds (else SIGINT).")
    ] = None,
    feed: Annotated[
        bool, typer.Option("--feed/--no-feed", help="Follow the account's executions.")
    ] = True,
    settle: Annotated[
        bool,
        typer.Option("--settle/--no-settle", help="Settle a new buy fill's pair at once."),
    ] = True,
    json_out: JsonOption = False,
) -> None:
    """Follow the account's executions (the fill feed), read the ingest stream, and settle
    each new buy fill's pair within a second. Runs until SIGINT/SIGTERM or --seconds.

    Exit 0 after a clean stop, 2 on bad configuration.
    """
    with handled():
        context = context_of(ctx)
        urls = context.urls
        refuse_outdated_schema(urls.database)
        settings = context.settings

        async def go() -> dict[str, Any]:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            if seconds is not None:
                loop.call_later(seconds, stop.set)
            async with (
                open_runtime(settings, urls) as rt,
                open_exchange(rt, dry_run=settings.dry_run) as exchange,
            ):
                settlement = build_settlement(rt, exchange, dry_run=settings.dry_run)
                async with open_watchers(rt, exchange, settlement, feed=feed, trigger=settle) as w:
                    running = asyncio.create_task(w.run(stop))
                    await stop.wait()
                    await w.stopped(running)
                    return w.stats()

        stats = run_async(go())
        if json_out:
            emit_json(stats)
        else:
            for name, figures in stats.items():
                console.print(f"{name}: {figures}")
