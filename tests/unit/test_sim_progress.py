"""``mmops sim`` on the real clock shows what it is doing: a line a minute when stdout is not a
terminal, always one at the end; nothing at all for --json or --simulated runs."""

from __future__ import annotations

from decimal import Decimal

import pytest

from mmops.entrypoints.cli_paper import SimFigures, SimProgress


def test_a_line_a_minute_and_one_at_the_end(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr("mmops.entrypoints.cli_paper.time.monotonic", lambda: now[0])
    with SimProgress("sim-1", 180, quiet=False) as shown:
        for elapsed in range(10, 190, 10):  # a step every 10 s of wall time
            now[0] += 10
            figures = SimFigures(elapsed, fills=elapsed // 10, take_profits=elapsed // 20,
                                 settlements=elapsed // 60, coverage=Decimal("99.5"))  # fmt: skip
            shown.update(figures)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":", 3)[:3] for line in lines] == [
        ["0", "00", "10 of 0"], ["0", "01", "10 of 0"], ["0", "02", "10 of 0"],
        ["0", "03", "00 of 0"],
    ]  # fmt: skip
    assert lines[-1] == ("0:03:00 of 0:03:00: sim-1: 18 fills, 9 take-profits, 3 settlements, "
                         "lowest coverage 99.5%")  # fmt: skip


def test_quiet_runs_print_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with SimProgress("sim-1", 60, quiet=True) as shown:
        shown.update(SimFigures(60, fills=3))
    assert capsys.readouterr().out == ""
