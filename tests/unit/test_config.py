"""Settings: env over TOML over defaults; bad values name the variable; secrets stay hidden."""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path

import pytest

from mmops.config import DEFAULT_TP_TIERS, load_settings, redact_url
from mmops.errors import ConfigurationError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("MMOPS_"):
            monkeypatch.delenv(name)


def test_defaults_are_sensible() -> None:
    s = load_settings()
    assert s.settlement_interval == 180
    assert s.migration_interval == 3600
    assert s.migration_batch_size == 10
    assert s.tp_tiers == DEFAULT_TP_TIERS
    assert s.http_host == "127.0.0.1"
    assert s.embedded_redis and s.embedded_database
    assert s.exchange == "paper"


def test_bad_integer_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMOPS_SETTLEMENT_INTERVAL", "abc")
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    assert "MMOPS_SETTLEMENT_INTERVAL" in str(caught.value)
    assert "integer" in str(caught.value)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("MMOPS_MIGRATION_BATCH_SIZE", "0", "greater than 0"),
        ("MMOPS_HTTP_PORT", "70000", "less than or equal to 65535"),
        ("MMOPS_DRY_RUN", "perhaps", "valid boolean"),
        ("MMOPS_LOG_FORMAT", "xml", "'console' or 'json'"),
        ("MMOPS_STOPLOSS_WARN", "NaN", "MMOPS_STOPLOSS_WARN"),
        ("MMOPS_TP_TIERS", '{"60": "0.01"}', "no 0-minute tier"),
        ("MMOPS_TP_TIERS", "{}", "is empty"),
        ("MMOPS_TP_TIERS", '{"0": "0.01", "60": "0.02"}', "must not rise"),
        ("MMOPS_TP_TIERS_BY_PAIR", '{"btc/usd": {"0": "0.01"}}', "invalid pair"),
        ("MMOPS_TP_TIERS_BY_PAIR", '{"FOO/BAR": {"0": "0.01"}}', "unknown pairs ['FOO/BAR']"),
        ("MMOPS_TP_TIERS", "garbage", "not valid JSON"),
        ("MMOPS_TP_RESERVE", '{"BTC": "-0.5"}', "must be a number >= 0"),
        ("MMOPS_EXCHANGE", "nosuchexchange", "unknown exchange"),
        ("MMOPS_REDIS_URL", "localhost:6379", "expected a URL starting with redis://"),
        ("MMOPS_DATABASE_URL", "mysql://db/x", "expected a URL starting with postgresql://"),
        ("MMOPS_ALERT_URLS", "json://ok.example/x nonsense", "alert URL number 2"),
    ],
)
def test_bad_values_are_named(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    assert name in str(caught.value)
    assert expected in str(caught.value)


def test_negative_markups_need_loss_tiers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMOPS_TP_TIERS", '{"0": "0.01", "2880": "-0.005"}')
    with pytest.raises(ConfigurationError, match="MMOPS_TP_ALLOW_LOSS_TIERS"):
        load_settings()
    monkeypatch.setenv("MMOPS_TP_ALLOW_LOSS_TIERS", "true")
    assert load_settings().tp_tiers[2880] == Decimal("-0.005")


def test_stoploss_thresholds_must_be_ordered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMOPS_STOPLOSS_WARN", "0.3")
    with pytest.raises(ConfigurationError, match="warn <= halt <= flatten"):
        load_settings()


def test_toml_file_under_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "mmops.toml"
    toml.write_text(
        'settlement_interval = 60\nmigration_batch_size = 25\nexchange = "kraken"\n'
        '[tp_tiers]\n0 = "0.02"\n30 = "0.01"\n'
    )
    monkeypatch.setenv("MMOPS_MIGRATION_BATCH_SIZE", "5")
    s = load_settings(toml)
    assert s.settlement_interval == 60
    assert s.migration_batch_size == 5  # the environment wins
    assert s.exchange == "kraken"
    assert s.tp_tiers == {0: Decimal("0.02"), 30: Decimal("0.01")}
    # The file is read by that call only: it leaks into no later settings.
    assert "MMOPS_CONFIG_FILE" not in os.environ
    assert load_settings().tp_tiers == DEFAULT_TP_TIERS


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="MMOPS_CONFIG_FILE"):
        load_settings(tmp_path / "nope.toml")


def test_key_without_secret_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMOPS_API_KEY", "k-123456")
    with pytest.raises(ConfigurationError, match="MMOPS_API_SECRET"):
        load_settings()


def test_secrets_never_show_in_repr_or_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMOPS_API_KEY", "key-SUPERSECRET")
    monkeypatch.setenv("MMOPS_API_SECRET", "c2VjcmV0LXNlY3JldA==")
    monkeypatch.setenv("MMOPS_DATABASE_URL", "postgresql://u:pa55word@db/x")
    monkeypatch.setenv("MMOPS_ALERT_URLS", "json://hooks.example/TOKEN123")
    s = load_settings()
    shown = repr(s) + str(s)
    for secret in ("SUPERSECRET", "c2VjcmV0LXNlY3JldA==", "pa55word", "TOKEN123"):
        assert secret not in shown
    assert set(s.secrets()) >= {"key-SUPERSECRET", "pa55word", "json://hooks.example/TOKEN123"}
    monkeypatch.setenv("MMOPS_REDIS_URL", "redis://:pa55word@h/0")
    monkeypatch.setenv("MMOPS_HTTP_PORT", "x")
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    assert "pa55word" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
        ("postgresql://user:pw@db/mmops", "postgresql://user:***@db/mmops"),
        ("postgresql://user@db/mmops", "postgresql://user@db/mmops"),
        ("redis://host:badport", "redis://host:badport"),
        ("redis://:pw@host:badport", "***"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_env_example_documents_every_setting_and_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    import shlex

    from mmops.config import Settings

    text = (Path(__file__).parents[2] / ".env.example").read_text()
    for field in Settings.model_fields:
        assert f"MMOPS_{field.upper()}" in text, f"MMOPS_{field.upper()} is not documented"
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            monkeypatch.setenv(name, " ".join(shlex.split(value)))
    assert load_settings() == Settings()
