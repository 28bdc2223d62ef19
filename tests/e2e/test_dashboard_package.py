"""The dashboard's pages and its vendored chart library are package data: an editable install
(this checkout) and a built wheel installed elsewhere both serve them, with no internet."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from mmops.entrypoints.http import Probes, create_app

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "mmops" / "entrypoints" / "static"
SERVED = {
    "/static/vendor/chartjs/chart.umd.min.js": "vendor/chartjs/chart.umd.min.js",
    "/static/vendor/chartjs/LICENSE.md": "vendor/chartjs/LICENSE.md",
    "/static/dashboard.js": "dashboard.js",
    "/static/dashboard.css": "dashboard.css",
}

# Run in a fresh interpreter against the installed copy only (argv[1]: its site directory).
CHECK = """
import asyncio, json, sys
sys.path.insert(0, sys.argv[1])
import httpx
import mmops
from mmops.entrypoints.http import Probes, create_app

async def nothing():
    return []

async def main():
    app = create_app(Probes(lambda: True, nothing, lambda: b"", nothing))
    out = {"module": mmops.__file__, "pages": {}, "files": {}}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        for path in ("/", "/sessions/demo-1"):
            r = await c.get(path)
            out["pages"][path] = [r.status_code, r.text]
        for path in json.loads(sys.argv[2]):
            r = await c.get(path)
            out["files"][path] = [r.status_code, r.content.hex()]
    print(json.dumps(out))

asyncio.run(main())
"""


async def nothing() -> list[dict[str, Any]]:
    return []


def client() -> httpx.AsyncClient:
    app = create_app(Probes(lambda: True, nothing, lambda: b"", nothing))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def served(c: httpx.AsyncClient) -> dict[str, tuple[int, bytes]]:
    return {p: (r.status_code, r.content) for p in SERVED if (r := await c.get(p))}


def expected() -> dict[str, tuple[int, bytes]]:
    return {p: (200, (STATIC / f).read_bytes()) for p, f in SERVED.items()}


async def test_the_checkout_serves_the_pages_and_the_chart_library() -> None:
    async with client() as c:
        assert await served(c) == expected()
        page = await c.get("/sessions/demo-1")
    assert page.status_code == 200
    assert '<script src="/static/vendor/chartjs/chart.umd.min.js"' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert b"Chart.js v4.6.1" in expected()["/static/vendor/chartjs/chart.umd.min.js"][1][:200]
    assert "4.6.1" in (STATIC / "vendor" / "chartjs" / "VERSION.md").read_text()


def test_a_wheel_installed_elsewhere_serves_the_same_files(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy: building in the checkout would leave build/ behind
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "mmops", source / "mmops", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    built = subprocess.run([*pip, "wheel", "--no-deps", "-w", str(wheels), str(source)],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    [wheel] = wheels.glob("mmops-*.whl")
    installed = subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)],
                               capture_output=True, text=True, timeout=120)  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-2000:]
    shutil.rmtree(source)  # nothing left to import but the installed copy
    run = subprocess.run(
        [sys.executable, "-c", CHECK, str(site), json.dumps(list(SERVED))],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout)
    assert out["module"].startswith(str(site))  # the wheel's copy, not the checkout
    files = {p: (status, bytes.fromhex(body)) for p, (status, body) in out["files"].items()}
    assert files == expected()
    for status, text in out["pages"].values():
        assert status == 200 and "/static/dashboard.js" in text


def test_json_carries_decimals_as_plain_strings_and_times_as_iso() -> None:
    from datetime import UTC, datetime
    from decimal import Decimal

    from mmops.jsonable import jsonable

    row = {"pnl": Decimal("1E-8"), "zero": Decimal("-0.00"), "big": Decimal("1.5E+3"),
           "at": datetime(2026, 1, 2, 3, 4, 5), "utc": datetime(2026, 1, 2, tzinfo=UTC),
           "rows": [(Decimal("-2.50"), None, 3, True)], "age_s": 1.5}  # fmt: skip
    assert jsonable(row) == {
        "pnl": "0.00000001", "zero": "0.00", "big": "1500",
        "at": "2026-01-02T03:04:05+00:00", "utc": "2026-01-02T00:00:00+00:00",
        "rows": [["-2.50", None, 3, True]], "age_s": 1.5,
    }  # fmt: skip
    for bad in (Decimal("NaN"), Decimal("Infinity"), float("nan"), object()):
        with pytest.raises(TypeError):
            jsonable({"x": bad})


async def test_without_stores_the_endpoints_say_why_as_json_without_secrets() -> None:
    from mmops import logs

    logs.register_secrets(["pg-PASSWORD-5150"])

    async def down() -> list[dict[str, Any]]:
        raise ConnectionError("postgresql://mmops:pg-PASSWORD-5150@db/x refused")

    app = create_app(Probes(lambda: True, nothing, lambda: b"", down))  # and no pool
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        sessions = await c.get("/api/sessions")
        series = await c.get("/api/sessions/demo-1/pnl")
        bad_id = await c.get("/api/sessions/demo%201/pnl")
        page = await c.get("/")
    assert sessions.status_code == 503
    errors = sessions.json()["errors"]
    assert len(errors) == 2 and "ConnectionError" in errors[0] and "PostgreSQL" in errors[1]
    assert series.status_code == 503 and "pool" in series.json()["error"]
    assert bad_id.status_code == 422
    assert page.status_code == 200  # the page loads and shows the errors it polls
    for response in (sessions, series, page):
        assert "pg-PASSWORD-5150" not in response.text


async def test_many_pages_polling_measure_the_status_once_per_ttl() -> None:
    """Each status view reads the exchange: open tabs must not multiply that."""
    import asyncio

    from mmops.entrypoints.dashboard import SharedStatus

    calls = 0

    async def status() -> list[dict[str, Any]]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return [{"session": f"s{calls}"}]

    shared = SharedStatus(status, ttl=0.3)
    first = await asyncio.gather(*(shared() for _ in range(5)))
    assert calls == 1 and all(rows == [{"session": "s1"}] for rows in first)
    assert await shared() == [{"session": "s1"}]
    await asyncio.sleep(0.3)
    assert await shared() == [{"session": "s2"}] and calls == 2


async def test_a_shared_series_is_computed_once_per_ttl_per_key_and_a_failure_is_kept() -> None:
    """Every open session page polls each series: the warehouse is asked once per TTL, and a
    store in trouble is not asked again by every tab."""
    import asyncio

    from mmops.entrypoints.dashboard import Shared

    asked: list[str] = []

    def query(key: str, fail: bool = False) -> Callable[[], Awaitable[str]]:
        async def compute() -> str:
            asked.append(key)
            await asyncio.sleep(0.02)
            if fail:
                raise TimeoutError(f"{key} took too long")
            return f"rows of {key}"

        return compute

    shared = Shared(ttl=0.3)
    got = await asyncio.gather(*(shared.get("pnl/s1", query("pnl/s1")) for _ in range(4)))
    assert got == ["rows of pnl/s1"] * 4
    assert await shared.get("pnl/s2", query("pnl/s2")) == "rows of pnl/s2"  # its own key
    for _ in range(3):
        with pytest.raises(TimeoutError):
            await shared.get("markouts/s1", query("markouts/s1", fail=True))
    assert asked == ["pnl/s1", "pnl/s2", "markouts/s1"]
    await asyncio.sleep(0.3)
    assert await shared.get("markouts/s1", query("markouts/s1")) == "rows of markouts/s1"
    assert asked[-1] == "markouts/s1" and len(asked) == 4
