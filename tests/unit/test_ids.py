"""Client order ids: deterministic, distinct, and in the UUID form Kraken's cl_ord_id accepts."""

from __future__ import annotations

import re
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mmops.domain.ids import MMOPS_NAMESPACE, client_order_id
from mmops.errors import InvalidIdentifier

LONG_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")

sessions = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,30}", fullmatch=True)
positions = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,40}", fullmatch=True)
generations = st.integers(min_value=0, max_value=10**6)


def test_ids_never_change_between_releases() -> None:
    """Pinned: a change would orphan live orders from the lookup after an ambiguous failure."""
    assert str(MMOPS_NAMESPACE) == "ea42f27b-857a-4207-8d36-d02a68b6bd06"
    assert client_order_id("S1", "P1", 0) == "449a5aa7-25a8-5f8c-9aaf-a83fbd9395d6"
    assert client_order_id("S1", "P1", 1) == "353566ba-9875-5e18-a10f-b17cbefac444"


def test_each_input_changes_the_id() -> None:
    ids = {
        client_order_id("S1", "P1", 0),
        client_order_id("S2", "P1", 0),
        client_order_id("S1", "P2", 0),
        client_order_id("S1", "P1", 1),
        client_order_id("S1.P1", "0", 0),  # no ambiguity from joining the parts
    }
    assert len(ids) == 5


def test_a_session_id_that_could_escape_its_key_is_refused() -> None:
    with pytest.raises(InvalidIdentifier):
        client_order_id("S{1}", "P1", 0)
    with pytest.raises(InvalidIdentifier):
        client_order_id("S1", "P 1", 0)


@pytest.mark.parametrize("generation", [-1, True, 1.0])
def test_a_generation_must_be_a_non_negative_int(generation: object) -> None:
    with pytest.raises(ValueError, match="generation"):
        client_order_id("S1", "P1", generation)  # type: ignore[arg-type]


@given(sessions, positions, generations)
def test_ids_are_stable_and_well_formed_long_uuids(session: str, position: str, gen: int) -> None:
    first = client_order_id(session, position, gen)
    assert client_order_id(session, position, gen) == first
    assert LONG_UUID.fullmatch(first)
    assert str(uuid.UUID(first)) == first and uuid.UUID(first).version == 5


@given(st.tuples(sessions, positions, generations), st.tuples(sessions, positions, generations))
def test_different_inputs_give_different_ids(
    a: tuple[str, str, int], b: tuple[str, str, int]
) -> None:
    assert (client_order_id(*a) == client_order_id(*b)) == (a == b)


@given(sessions, positions, generations)
def test_ids_are_exactly_uuid5_of_the_namespace_and_the_joined_name(
    session: str, position: str, gen: int
) -> None:
    """The id is built without ``uuid.UUID`` (for speed) and must equal what ``uuid5`` gives."""
    expected = str(uuid.uuid5(MMOPS_NAMESPACE, f"tp/{session}/{position}/{gen}"))
    assert client_order_id(session, position, gen) == expected
