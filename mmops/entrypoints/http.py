"""The daemon's HTTP endpoints: health, readiness, metrics, status and a small dashboard."""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from mmops import logs


@dataclass
class Probes:
    """What the endpoints ask the daemon."""

    alive: Callable[[], bool]
    readiness: Callable[[], Awaitable[list[str]]]  # reasons it is not ready; empty = ready
    metrics: Callable[[], bytes]
    status: Callable[[], Awaitable[list[dict[str, Any]]]]


def create_app(probes: Probes) -> FastAPI:
    app = FastAPI(title="mmops", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        alive = probes.alive()
        body = {
            "status": "ok" if alive else "stopping",
            "scheduler": "running" if alive else "stopped",
        }
        return JSONResponse(body, status_code=200 if alive else 503)

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        reasons = await probes.readiness()
        if reasons:
            return JSONResponse({"ready": False, "reasons": reasons}, status_code=503)
        return JSONResponse({"ready": True})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(probes.metrics(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/status")
    async def status() -> JSONResponse:
        try:
            return JSONResponse({"sessions": await probes.status()})
        except Exception as e:  # a store is down: say so, as JSON, without a trace
            error = logs.scrub(f"{type(e).__name__}: {e}")
            return JSONResponse({"error": error}, status_code=503)

    @app.get("/", response_class=HTMLResponse)
    async def dashboard() -> HTMLResponse:
        try:
            sessions = await probes.status()
        except Exception as e:  # shown on the page rather than a 500
            message = html.escape(logs.scrub(str(e)))
            return HTMLResponse(_page(f"<p>status unavailable: {message}</p>"), 503)
        return HTMLResponse(_page(_table(sessions)))

    return app


def _table(sessions: list[dict[str, Any]]) -> str:
    rows = []
    for s in sessions:
        last = s["last_settlement"]
        worst = min((float(c["percent"]) for c in s["coverage"]), default=100.0)
        cells = [s["session"], s["status"], str(len(s["pairs"])), str(last["state"] or "-"),
                 f"{last['age_s']:.0f} s" if last["age_s"] is not None else "-",
                 f"{worst:.2f}%", str(last.get("stoploss_level") or "-"),
                 "yes" if s["migration_completed_at"] else "no"]  # fmt: skip
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    head = ("<tr><th>session</th><th>status</th><th>pairs</th><th>settlement</th><th>age</th>"
            "<th>lowest coverage</th><th>stop-loss</th><th>migrated</th></tr>")  # fmt: skip
    return f"<table>{head}{''.join(rows)}</table>" if rows else "<p>no recent sessions</p>"


def _page(body: str) -> str:
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>mmops</title>"
        "<meta http-equiv='refresh' content='15'><style>body{font-family:sans-serif}"
        "td,th{padding:4px 10px;text-align:left}</style></head>"
        f"<body><h1>mmops</h1>{body}<p><a href='/metrics'>metrics</a> · "
        "<a href='/status'>status (JSON)</a></p></body></html>"
    )
