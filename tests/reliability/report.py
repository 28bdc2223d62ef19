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
    merged: dict[tuple[int, str, str], dict[str, object]] = defaultdict(dict)
    for e in entries:
        key = (int(e["number"]), str(e["name"]), str(e["test"]).split("::")[-1])  # type: ignore[call-overload]
        merged[key] = e
    for (number, name, test), e in sorted(merged.items()):
        held = "<br>".join(str(h) for h in e["held"])  # type: ignore[attr-defined]
        result = "passed" if e["passed"] else "**FAILED**"
        rows.append(f"| {number} | {name} | `{test}` | {e['runs']} | {held} | {result} |")
    return HEADER + "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render(json.loads(Path(sys.argv[1]).read_text())))
