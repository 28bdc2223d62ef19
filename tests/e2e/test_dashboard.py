"""The dashboard of ``mmops serve`` in a real browser: after a paper session, every page loads in
Debian's headless Chromium (driven by Playwright), every plot is drawn with the data of its JSON
endpoint, the pages update themselves without a reload, nothing is fetched from outside, and the
console stays free of errors. ``MMOPS_SCREENSHOTS=1`` saves the pages to docs/screenshots/.

Chromium comes from Debian's packages (``make browser``, a step of ``make test``), never from
Playwright's own downloads. Without it the test fails saying how to install it; only
``MMOPS_SKIP_BROWSER=1`` skips it."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from mmops.adapters.postgres import schema

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
SEED = 20
SESSION = f"demo-{SEED}"
SECRET_KEY = "key-DASHBOARD-NEVER-1234"
SECRET = "c2VjcmV0LURBU0hCT0FSRA=="
SERIES = ("pnl", "coverage", "funnel", "time-to-fill", "markouts", "tiers")
CHARTS = ("pnl", "coverage", "funnel", "ttf", "markouts")


def chromium() -> str:
    """Debian's chromium, or a failure saying how to install it (a skip only when asked)."""
    if os.environ.get("MMOPS_SKIP_BROWSER") == "1":
        pytest.skip("MMOPS_SKIP_BROWSER=1: the dashboard's browser test is skipped on request")
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the dashboard's browser test needs Debian's chromium. "
            "Install it with `make browser` (as root: apt-get install -y chromium), or set "
            "MMOPS_SKIP_BROWSER=1 to skip this test explicitly.",
            pytrace=False,
        )
    return str(CHROMIUM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMOPS_")}
    env.update(extra)
    return env


@contextmanager
def serving(env: dict[str, str], log: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mmops.entrypoints", "serve"],
            env={**env, "MMOPS_HTTP_PORT": str(port)}, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            yield proc, f"http://127.0.0.1:{port}"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def wait_until_up(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "mmops serve exited early"
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"mmops serve did not answer within {timeout} s")


def money(value: str | None) -> str:
    """How the page shows a Decimal string: 2 places, half away from zero, thousands
    separators, a real minus sign and a plus on gains."""
    if value is None:
        return "\u2013"  # en dash
    d = Decimal(value).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    text = f"{abs(d):,}"
    return text if d == 0 else ("\u2212" if d < 0 else "+") + text  # minus sign


def drop_session_keys(redis_url: str) -> None:
    import redis as sync_redis

    client = sync_redis.Redis.from_url(redis_url)
    try:
        for pattern in (f"*{{{SESSION}}}*", f"paper:{{{SESSION}}}:*"):
            for key in client.scan_iter(match=pattern.replace("{", "\\{").replace("}", "\\}")):
                client.delete(key)
    finally:
        client.close()


class Browser:
    """One headless Chromium page that records everything that goes wrong on it."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.problems: list[str] = []
        self.requests: list[str] = []

    def watch(self, page: Any) -> None:
        def console(message: Any) -> None:
            if message.type in ("error", "warning"):
                self.problems.append(f"console {message.type}: {message.text}")

        page.on("console", console)
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: self.problems.append(f"request failed: {r.url}"))
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("response", lambda r: r.status >= 400 and self.problems.append(
            f"HTTP {r.status}: {r.url}"))  # fmt: skip

    async def polls(self, page: Any, at_least: int, timeout: float = 20) -> int:
        """Wait until the page has refreshed itself ``at_least`` times (evaluate, not
        wait_for_function: the page's CSP forbids the eval that would need)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = int(await page.evaluate("window.mmops ? window.mmops.polls : 0"))
            if done >= at_least:
                return done
            await asyncio.sleep(0.1)
        raise AssertionError(f"{page.url}: fewer than {at_least} refreshes in {timeout} s")


async def test_every_dashboard_page_draws_its_plots_from_the_api_without_errors(
    empty_database_url: str, redis_url: str, tmp_path: Path
) -> None:
    executable = chromium()
    from playwright.async_api import async_playwright

    schema.upgrade(empty_database_url)
    env = clean_env(
        MMOPS_DATABASE_URL=empty_database_url, MMOPS_REDIS_URL=redis_url,
        MMOPS_DATA_DIR=str(tmp_path), MMOPS_PAPER_VENUE=SESSION, MMOPS_LOG_FORMAT="json",
        MMOPS_SETTLEMENT_INTERVAL="60", MMOPS_MIGRATION_INTERVAL="3600",
        MMOPS_API_KEY=SECRET_KEY, MMOPS_API_SECRET=SECRET,
    )  # fmt: skip
    try:
        demo = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "mmops.entrypoints", "demo", "--pairs", "3", "--hours", "1.5",
             "--seed", str(SEED), "--json"],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert demo.returncode == 0, demo.stderr[-3000:]
        with serving(env, tmp_path / "serve.log") as (proc, url):
            await asyncio.to_thread(wait_until_up, url, proc)
            api = await check_api(url)
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
                try:
                    context = await browser.new_context(viewport={"width": 1400, "height": 900})
                    watcher = Browser(url)
                    page = await context.new_page()
                    watcher.watch(page)
                    await check_overview(page, watcher, api)
                    await check_session_page(page, watcher, api)
                finally:
                    await browser.close()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
        log = (tmp_path / "serve.log").read_text()
    finally:
        drop_session_keys(redis_url)
    assert watcher.problems == []
    outside = [u for u in watcher.requests if not u.startswith(url)]
    assert outside == []  # no CDN, no font service: everything from the daemon
    assert SECRET_KEY not in log and SECRET not in log


async def check_api(url: str) -> dict[str, Any]:
    """Every endpoint behind a plot answers 200 with rows for the demo session; money is a
    decimal string, times are ISO 8601; no secret in any of them."""
    api: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=url, timeout=20) as client:
        overview = await client.get("/api/sessions")
        assert overview.status_code == 200, overview.text
        api["sessions"] = overview.json()
        for name in SERIES:
            response = await client.get(f"/api/sessions/{SESSION}/{name}")
            assert response.status_code == 200, (name, response.text)
            body = response.json()
            assert body["session"] == SESSION and body["rows"], (name, body)
            api[name] = body["rows"]
        texts = [
            overview.text,
            *[(await client.get(p)).text for p in ("/", f"/sessions/{SESSION}")],
        ]
        chart_js = await client.get("/static/vendor/chartjs/chart.umd.min.js")
    [row] = [r for r in api["sessions"]["sessions"] if r["session"] == SESSION]
    assert api["sessions"]["errors"] == []
    assert row["warehouse"] is not None and row["coverage"]
    Decimal(row["warehouse"]["realized_pnl"])  # a decimal string, exactly
    for point in api["pnl"]:
        assert isinstance(point["cumulative_pnl"], str) and "E" not in point["cumulative_pnl"]
        assert point["at"].endswith("+00:00")
    assert chart_js.status_code == 200 and b"Chart.js v4.6.1" in chart_js.content[:200]
    for text in texts:
        assert SECRET_KEY not in text and SECRET not in text
    return api


async def check_overview(page: Any, watcher: Browser, api: dict[str, Any]) -> None:
    await page.goto(f"{watcher.base}/?poll=1")
    await watcher.polls(page, 2)  # refreshed in place at least once
    navigations = await page.evaluate("performance.getEntriesByType('navigation').length")
    assert navigations == 1  # no reload
    link = page.locator(f"#sessions a[href='/sessions/{SESSION}']")
    assert await link.count() == 1
    cells = await link.locator("xpath=ancestor::tr/td").all_inner_texts()
    [row] = [r for r in api["sessions"]["sessions"] if r["session"] == SESSION]
    w = row["warehouse"]
    assert cells[7] == money(w["realized_pnl_today"]), cells
    assert cells[8] == money(w["realized_pnl"]), cells
    worst = min(Decimal(c["percent"]) for c in row["coverage"])
    assert cells[4] == f"{worst:.2f} %", cells
    # The page's Decimal formatting (strings and BigInt, no float) agrees with Python's.
    cases = ["0", "-0.004", "0.005", "-0.005", "1234567.895", "-1234567.894", "99.999",
             "0.00000001", "-12.3456789012345678901234567890"]  # fmt: skip
    shown = await page.evaluate(
        "cases => cases.map(c => window.mmops.format.fmt(c, 2, true))", cases
    )
    assert shown == [money(c) for c in cases]
    align = await link.locator("xpath=ancestor::tr/td[9]").evaluate(
        "td => getComputedStyle(td).textAlign"
    )
    assert align == "right"
    await screenshot(page, "overview")


async def check_session_page(page: Any, watcher: Browser, api: dict[str, Any]) -> None:
    await page.goto(f"{watcher.base}/sessions/{SESSION}?poll=1")
    await watcher.polls(page, 2)
    points = await page.evaluate(
        """() => Object.fromEntries(Object.entries(window.mmops.charts).map(([name, chart]) => [
            name, chart.data.datasets.map(d => d.data.filter(
                p => p !== null && !(typeof p === 'object' && p.y === null)).length)]))"""
    )
    assert set(points) == set(CHARTS), points
    for name in CHARTS:
        assert sum(points[name]) > 0, (name, points)
    assert sum(points["pnl"]) == len(api["pnl"])  # one point per fill, none lost
    binned = await page.evaluate(
        """window.mmops.charts.ttf.data.datasets.reduce(
            (n, d) => n + d.data.reduce((a, b) => a + b, 0), 0)"""
    )
    assert binned == len(api["time-to-fill"])  # every filled take-profit in one bin
    funnel = await page.evaluate(
        "window.mmops.charts.funnel.data.datasets.map(d => [d.label, d.data])"
    )
    assert funnel == [
        [key, [r[key] for r in api["funnel"]]] for key in ("placed", "repriced", "filled", "open")
    ]
    assert len(points["funnel"]) == 4  # placed, repriced, filled, open
    drawn = await page.evaluate(
        """() => [...document.querySelectorAll('canvas')].map(c => [c.id, c.width, c.height,
            c.parentElement.querySelector('.nodata').hidden])"""
    )
    assert len(drawn) == len(CHARTS)
    for canvas_id, width, height, nodata_hidden in drawn:
        assert width > 0 and height > 0 and nodata_hidden, canvas_id
    rows = await page.locator("#tiers tbody tr").count()
    assert rows == len(api["tiers"])
    navigations = await page.evaluate("performance.getEntriesByType('navigation').length")
    assert navigations == 1
    await screenshot(page, "session")


async def screenshot(page: Any, name: str) -> None:
    if os.environ.get("MMOPS_SCREENSHOTS") == "1":
        directory = ROOT / "docs" / "screenshots"
        directory.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(directory / f"{name}.png"), full_page=True)
