"""``mmops serve``: schedules, HTTP endpoints and alerts in one process."""

from __future__ import annotations

import typer

from mmops.entrypoints.cli_common import context_of, handled, run_async


def serve(ctx: typer.Context) -> None:
    """Run settlement and migration on their schedules, with /healthz, /readyz, /metrics,
    /status and a dashboard on MMOPS_HTTP_HOST:MMOPS_HTTP_PORT. SIGTERM or SIGINT stops it
    gracefully (exit 0); an address that cannot be bound (in use) is exit 2, before anything
    starts."""
    from mmops.entrypoints.serve import listen
    from mmops.entrypoints.serve import serve as run_daemon  # FastAPI: only this command's cost

    with handled():
        context = context_of(ctx)
        settings = context.settings
        with listen(settings.http_host, settings.http_port) as listener:  # before any server
            run_async(run_daemon(settings, context.urls, listener))
