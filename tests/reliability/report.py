"""Render docs/RELIABILITY.md from the ledger a reliability run wrote.

Usage: MMOPS_RELIABILITY_RESULTS=/tmp/r.json make test  (or pytest tests/reliability)
       python -m tests.reliability.report /tmp/r.json > docs/RELIABILITY.md
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
    sys.stdout.write(render(json.loads(Path(sys.argv[1]).read_text())))
