"""``mmops serve``: schedules, HTTP endpoints and alerts in one process."""

from __future__ import annotations

from mmops.entrypoints.cli import app, ctx, handled, run_async


@app.command("serve")
def serve() -> None:
    """Run settlement and migration on their schedules, with /healthz, /readyz, /metrics,
    /status and a dashboard on MMOPS_HTTP_HOST:MMOPS_HTTP_PORT. SIGTERM or SIGINT stops it
    gracefully (exit 0)."""
    from mmops.entrypoints.serve import serve as run_daemon  # FastAPI: only this command's cost

    with handled():
        context = ctx()
        run_async(run_daemon(context.settings, context.urls))
