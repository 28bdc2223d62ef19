"""Text as PostgreSQL can store it."""

from __future__ import annotations


def storable(text: str) -> str:
    """``text`` as PostgreSQL can store it: a NUL and lone surrogates (which hostile records can
    hold) written as escapes, so their reject is recorded instead of failing the session."""
    if "\x00" in text or not text.isascii():
        text = text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode()
    return text
