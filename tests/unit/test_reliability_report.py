"""The reliability page adds up the runs of a test's scenarios and lists each invariant once."""

from __future__ import annotations

from tests.reliability.report import render


def test_examples_of_one_test_are_added_up_and_a_failure_shows() -> None:
    entries = [
        {"number": 6, "name": "Hostile", "test": "t.py::test_x", "runs": 1,
         "held": ["a", "b"], "passed": True},
        {"number": 6, "name": "Hostile", "test": "t.py::test_x", "runs": 1,
         "held": ["b", "c"], "passed": True},
        {"number": 2, "name": "Crashes", "test": "t.py::test_y", "runs": 21,
         "held": ["d"], "passed": False},
    ]  # fmt: skip
    page = render(entries)  # type: ignore[arg-type]
    assert "| 6 | Hostile | `test_x` | 2 | a<br>b<br>c | passed |" in page
    assert "| 2 | Crashes | `test_y` | 21 | d | **FAILED** |" in page
    assert page.index("| 2 |") < page.index("| 6 |")
