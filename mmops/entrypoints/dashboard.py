"""The dashboard of ``mmops serve``: two HTML pages and the JSON endpoints behind their plots.

``/`` is the overview (every recent session: status, coverage against the exchange, stop-loss
level, P&L today) and ``/sessions/{id}`` a session's page (its plots and tier table). Both are
static HTML from ``static/`` whose script polls the JSON endpoints below every few seconds and
redraws in place; the chart library (Chart.js, ``static/vendor/chartjs/VERSION.md``) is package
data too, so a machine with no internet shows the same page.

JSON carries money and rates exactly: every Decimal is a plain decimal string (never a float,
never an exponent) and every time an ISO 8601 string. A store that does not answer within
``QUERY_TIMEOUT`` seconds gives a 503 with the error, scrubbed of secrets, never a trace.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from fastapi import APIRouter, FastAPI, Path
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from psycopg_pool import AsyncConnectionPool

from mmops import logs
from mmops.adapters.postgres import analysis
from mmops.jsonable import jsonable

QUERY_TIMEOUT = 5.0  # seconds a dashboard query may take before its endpoint answers 503
STATUS_TTL = 30.0  # seconds one status view (a reconciliation against the exchange) is reused
# Seconds a warehouse series is reused: it changes only when migration runs (hourly by default),
# while every open session page polls each series every few seconds.
SERIES_TTL = 30.0

Rows = list[dict[str, Any]]
Status = Callable[[], Awaitable[Rows]]
SessionQuery = Callable[[AsyncConnectionPool, str], Awaitable[Rows]]


def _tiers(pool: AsyncConnectionPool, session_id: str) -> Awaitable[Rows]:
    return analysis.tier_report(pool, session_id)


# /api/sessions/{id}/<name> → the warehouse query behind it (one per plot, and the tier table).
SESSION_SERIES: Mapping[str, SessionQuery] = {
    "pnl": analysis.pnl_series,
    "coverage": analysis.coverage_series,
    "funnel": analysis.tp_funnel,
    "time-to-fill": analysis.time_to_fill,
    "markouts": analysis.markouts,
    "tiers": _tiers,
}

# Pages only load what they are served from here: no inline script, nothing from elsewhere.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_SESSION_ID = Path(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:@+-]+$")


class JSON(JSONResponse):
    """A JSONResponse through :func:`jsonable`, compact, never cached by the browser."""

    def __init__(self, content: Any, status_code: int = 200) -> None:
        super().__init__(content, status_code, headers={"Cache-Control": "no-store"})

    def render(self, content: Any) -> bytes:
        return json.dumps(jsonable(content), separators=(",", ":")).encode()


def _page(name: str) -> str:
    return (resources.files("mmops.entrypoints") / "static" / name).read_text(encoding="utf-8")


def _reason(e: Exception) -> str:
    """Why a store did not answer, in one line without secrets."""
    if isinstance(e, TimeoutError):
        return f"no answer within {QUERY_TIMEOUT:g} s"
    return logs.scrub(f"{type(e).__name__}: {e}")


async def _timed(query: Awaitable[Rows]) -> Rows:
    async with asyncio.timeout(QUERY_TIMEOUT):
        return await query


class Shared:
    """Values computed at most once per ``ttl`` seconds per key, however many pages poll them:
    concurrent callers share one computation, and a failure is kept as long as a value (a
    store or venue in trouble is not asked again by every open tab). At most ``size`` keys are
    kept, the oldest dropped first."""

    def __init__(self, ttl: float, size: int = 256) -> None:
        self._ttl = ttl
        self._size = size
        self._locks: dict[str, asyncio.Lock] = {}
        self._values: dict[str, tuple[float, Any, BaseException | None]] = {}

    async def get(self, key: str, compute: Callable[[], Awaitable[Any]]) -> Any:
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            now = time.monotonic()
            kept = self._values.get(key)
            if kept is None or now - kept[0] >= self._ttl:
                try:
                    kept = (now, await compute(), None)
                except Exception as e:  # kept, then raised to each caller for the TTL
                    kept = (now, None, e)
                except BaseException:  # cancelled: nothing kept, nor its lock
                    if key not in self._values:
                        self._locks.pop(key, None)
                    raise
                self._values.pop(key, None)
                self._values[key] = kept
                while len(self._values) > self._size:
                    oldest = next(iter(self._values))
                    self._values.pop(oldest)
                    self._locks.pop(oldest, None)
            if kept[2] is not None:
                raise kept[2].with_traceback(None)  # each raise from here, not piled up
            return kept[1]


class SharedStatus:
    """The status view, measured at most once per ``ttl`` seconds however many pages poll it:
    each measurement reads the exchange (open orders for coverage), whose rate limits do not
    grow with the number of open browser tabs. A failure is kept as long."""

    def __init__(self, status: Status, ttl: float = STATUS_TTL) -> None:
        self._status = status
        self._shared = Shared(ttl, size=1)

    async def __call__(self) -> Rows:
        rows: Rows = await self._shared.get("status", self._status)
        return rows


def mount(app: FastAPI, status: Status, pool: AsyncConnectionPool | None) -> None:
    """Add the pages, the JSON endpoints and ``/static`` to ``app``. Without a pool (no
    warehouse), the warehouse endpoints answer 503 and the pages say so."""
    app.mount("/static", StaticFiles(packages=[("mmops.entrypoints", "static")]), name="static")
    pages = {"overview": _page("overview.html"), "session": _page("session.html")}
    headers = {"Content-Security-Policy": _CSP, "Cache-Control": "no-store"}
    app.include_router(_api(SharedStatus(status), pool))

    @app.get("/", response_class=HTMLResponse)
    async def overview_page() -> HTMLResponse:
        return HTMLResponse(pages["overview"], headers=headers)

    @app.get("/sessions/{session_id}", response_class=HTMLResponse)
    async def session_page(session_id: str = _SESSION_ID) -> HTMLResponse:
        return HTMLResponse(pages["session"], headers=headers)


def _api(status: Status, pool: AsyncConnectionPool | None) -> APIRouter:
    router = APIRouter(prefix="/api")

    @router.get("/sessions")
    async def sessions() -> JSON:
        """The overview: every recent session's status row (as ``/status``) with its
        warehouse figures under ``warehouse`` (null before its first migration)."""
        errors: list[str] = []
        try:
            rows = await _timed(status())
        except Exception as e:  # a store is down: the page says so and keeps polling
            errors.append(_reason(e))
            rows = []
        figures: dict[str, dict[str, Any]] = {}
        if pool is None:
            errors.append("no PostgreSQL pool: warehouse figures unavailable")
        else:
            try:
                figures = {r["session_id"]: r for r in await _timed(analysis.overview(pool))}
            except Exception as e:
                errors.append(_reason(e))
        body = {"generated_at": datetime.now(UTC), "sessions": _merge(rows, figures),
                "errors": errors}  # fmt: skip
        return JSON(body, status_code=503 if len(errors) == 2 else 200)

    shared = Shared(SERIES_TTL)
    for name, query in SESSION_SERIES.items():
        route = _series(name, query, pool, shared)
        router.add_api_route(f"/sessions/{{session_id}}/{name}", route)
    return router


def _merge(rows: Rows, figures: Mapping[str, dict[str, Any]]) -> Rows:
    """The status rows (recent sessions, measured live), each with its warehouse figures; then
    the warehouse's other sessions, older ones, with what the warehouse knows of them."""
    merged = [{**row, "warehouse": figures.get(row["session"])} for row in rows]
    live = {row["session"] for row in rows}
    for sid, w in figures.items():
        if sid not in live:
            merged.append({
                "session": sid, "status": w["status"], "mode": w["mode"], "exchange": None,
                "pairs": w["pairs"], "started_at": w["started_at"], "ended_at": w["ended_at"],
                "last_settlement": None, "coverage": None, "stale": False,
                "migration_completed_at": w["migrated_at"], "warehouse": w,
            })  # fmt: skip
    return merged


def _series(
    name: str, query: SessionQuery, pool: AsyncConnectionPool | None, shared: Shared
) -> Callable[[str], Awaitable[JSON]]:
    async def endpoint(session_id: str = _SESSION_ID) -> JSON:
        if pool is None:
            return JSON({"error": "no PostgreSQL pool"}, status_code=503)
        try:
            rows = await shared.get(f"{name}/{session_id}", lambda: _timed(query(pool, session_id)))
        except Exception as e:  # StoreUnavailable, a timeout: 503 with the reason
            return JSON({"error": _reason(e)}, status_code=503)
        return JSON({"session": session_id, "series": name, "rows": rows})

    endpoint.__name__ = f"series_{name.replace('-', '_')}"
    return endpoint
