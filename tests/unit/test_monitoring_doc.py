"""docs/MONITORING_QUERIES.md shows the exact per-pair P&L query the demo runs."""

from __future__ import annotations

from pathlib import Path

from mmops.adapters.postgres.analysis import PAIR_PNL


def test_the_doc_holds_the_demo_query_verbatim() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "MONITORING_QUERIES.md").read_text()
    assert f"```sql\n{PAIR_PNL};\n```" in doc
