"""The paper venue's compare-and-set argument: netstrings, byte for byte as before."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mmops.adapters.paper.guarded import Read, _netstrings


def _the_plain_way(items: list[str]) -> bytes:
    """``_netstrings`` as it was before its all-ASCII shortcut."""
    text = "".join(
        [
            f"{len(s) if s.isascii() else len(s.encode('utf-8', 'surrogateescape'))}:{s}"
            for s in items
        ]
    )
    return text.encode("utf-8", "surrogateescape")


def _outcome(items: list[str]) -> object:
    try:
        return _netstrings(items)
    except UnicodeEncodeError as e:  # a lone surrogate surrogateescape cannot carry
        return type(e)


def _plain_outcome(items: list[str]) -> object:
    try:
        return _the_plain_way(items)
    except UnicodeEncodeError as e:
        return type(e)


# ASCII (the usual case), any text, and the bytes a client decoded with surrogateescape.
texts = st.one_of(
    st.text(alphabet=st.characters(max_codepoint=127)),
    st.text(),
    st.binary().map(lambda b: b.decode("utf-8", "surrogateescape")),
)


@given(st.lists(texts, max_size=8))
def test_netstrings_are_what_they_were(items: list[str]) -> None:
    assert _outcome(items) == _plain_outcome(items)


def test_a_read_is_a_key_by_its_fields() -> None:
    assert Read("get", "k") == Read("get", "k", "", "")
    assert {Read("hget", "h", "f"): "v"}[Read("hget", "h", "f")] == "v"
    assert Read("hget", "h", "f") != Read("held", "h", "f")
