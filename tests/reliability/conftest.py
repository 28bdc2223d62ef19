"""Reliability scenarios (``-m reliability``): real processes, real Redis and PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.ledger import LEDGER, Scenario, write


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/reliability/" in str(item.fspath):
            item.add_marker(pytest.mark.reliability)


@pytest.fixture
def scenario(request: pytest.FixtureRequest) -> Iterator[Any]:
    """``scenario(number, name)`` → a Scenario recorded in the ledger when the test passes."""
    made: list[Scenario] = []

    def make(number: int, name: str) -> Scenario:
        s = Scenario(number, name, request.node.nodeid)
        made.append(s)
        return s

    yield make
    failed = getattr(request.node, "rep_call", None)
    for s in made:
        s.passed = failed is not None and failed.passed
        LEDGER.append(s)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]


def pytest_sessionfinish(session: pytest.Session) -> None:
    target = os.environ.get("MMOPS_RELIABILITY_RESULTS")
    worker = os.environ.get("PYTEST_XDIST_WORKER")  # under xdist: one part per worker
    if target and LEDGER:
        write(Path(f"{target}.{worker}" if worker else target))
