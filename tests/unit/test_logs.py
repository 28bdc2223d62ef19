"""Secrets never reach a log line, whatever the field or level."""

from __future__ import annotations

import io
import json

from mmops import logs


def test_registered_secrets_are_scrubbed_from_every_field() -> None:
    out = io.StringIO()
    logs.register_secrets(["sk-live-ABCDEF", "hunter22"])
    logs.configure("DEBUG", "json", stream=out)
    log = logs.get_logger("t")
    log.debug("connect", url="postgresql://u:hunter22@db/x", detail=ValueError("sk-live-ABCDEF"))
    log.error("failed with sk-live-ABCDEF")
    text = out.getvalue()
    assert "hunter22" not in text and "sk-live-ABCDEF" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0]["url"] == "postgresql://u:***@db/x"
    assert lines[1]["event"] == "failed with ***"


def test_short_values_are_not_treated_as_secrets() -> None:
    logs.register_secrets(["ab"])
    assert logs.scrub("about") == "about"
