"""Render docs/RELIABILITY.md from the ledger a reliability run wrote.

Usage: MMOPS_RELIABILITY_RESULTS=/tmp/r.json make test  (or pytest tests/reliability)
       python -m tests.reliability.report /tmp/r.json > docs/RELIABILITY.md
Under pytest-xdist each worker writes its own part (``/tmp/r.json.gw0`` ...); the command
reads them all when ``/tmp/r.json`` itself does not exist.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

HEADER = """# Reliability

Money depends on two promises: no take-profit is ever placed twice, and no fill is ever lost.
`tests/reliability/` tries to break them with real processes, real Redis and PostgreSQL, the
paper venue and the local Kraken server; CI runs it with every test run. This page is generated
from one such run (`python -m tests.reliability.report`), not written by hand.

| # | scenario | test | runs | what held | result |
|---|---|---|---|---|---|
"""


def render(entries: list[dict[str, object]]) -> str:
    rows = []
    runs: dict[tuple[int, str, str], int] = defaultdict(int)
    held: dict[tuple[int, str, str], list[str]] = defaultdict(list)
    passed: dict[tuple[int, str, str], bool] = defaultdict(lambda: True)
    for e in entries:  # one entry per scenario object: a hypothesis test makes one an example
        key = (int(str(e["number"])), str(e["name"]), str(e["test"]).split("::")[-1])
        runs[key] += int(str(e["runs"]))
        held[key] += [str(h) for h in e["held"] if str(h) not in held[key]]  # type: ignore[attr-defined]
        passed[key] = passed[key] and bool(e["passed"])
    for key in sorted(runs):
        number, name, test = key
        result = "passed" if passed[key] else "**FAILED**"
        rows.append(
            f"| {number} | {name} | `{test}` | {runs[key]} | {'<br>'.join(held[key])} | {result} |"
        )
    return HEADER + "\n".join(rows) + "\n"


if __name__ == "__main__":
    # One file, or the parts the test workers wrote (``RESULTS.json.gw0``, ``.gw1``, ...).
    base = Path(sys.argv[1])
    parts = [base] if base.exists() else sorted(base.parent.glob(f"{base.name}.gw*"))
    sys.stdout.write(render([e for part in parts for e in json.loads(part.read_text())]))
