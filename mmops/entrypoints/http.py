"""The daemon's HTTP endpoints: health, readiness, metrics, status, and the dashboard (its pages
and JSON endpoints are in :mod:`mmops.entrypoints.dashboard`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from psycopg_pool import AsyncConnectionPool

from mmops import logs
from mmops.entrypoints import dashboard


@dataclass
class Probes:
    """What the endpoints ask the daemon."""

    alive: Callable[[], bool]
    readiness: Callable[[], Awaitable[list[str]]]  # reasons it is not ready; empty = ready
    metrics: Callable[[], bytes]
    status: Callable[[], Awaitable[list[dict[str, Any]]]]
    pool: AsyncConnectionPool | None = None  # the warehouse, for the dashboard's figures


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

    dashboard.mount(app, probes.status, probes.pool)
    return app
