"""What the reliability suite proved: each scenario, how many times it ran, what held.

Tests record into a ``Scenario`` (the ``scenario`` fixture); at the end of the run the ledger
is written to ``MMOPS_RELIABILITY_RESULTS`` when that is set, and ``python -m
tests.reliability.report RESULTS.json`` renders docs/RELIABILITY.md from it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Scenario:
    number: int
    name: str
    test: str
    runs: int = 0
    held: list[str] = field(default_factory=list)
    passed: bool = False

    def ran(self, times: int = 1) -> None:
        self.runs += times

    def holds(self, invariant: str, condition: bool) -> None:
        """Assert ``condition`` and remember ``invariant`` as proven (once per name)."""
        assert condition, f"invariant broken: {invariant}"
        if invariant not in self.held:
            self.held.append(invariant)


LEDGER: list[Scenario] = []


def write(path: Path) -> None:
    path.write_text(json.dumps([asdict(s) for s in LEDGER], indent=2) + "\n")
