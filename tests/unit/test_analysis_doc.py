"""docs/MONITORING_QUERIES.md shows every analysis query verbatim, as the code runs it."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmops.adapters.postgres.analysis import DOCUMENTED

DOC = Path(__file__).parents[2] / "docs" / "MONITORING_QUERIES.md"


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_the_doc_holds_each_analysis_query_verbatim(name: str) -> None:
    assert f"```sql\n{DOCUMENTED[name]};\n```" in DOC.read_text(), name
