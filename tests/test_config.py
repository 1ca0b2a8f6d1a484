"""Config.from_env: defaults, parsing, and errors that name the variable and value."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from commandbus.config import DEFAULT_DATA_DIR, Config
from commandbus.errors import ConfigError


def test_defaults_from_an_empty_environment() -> None:
    config = Config.from_env({})
    assert config == Config()
    assert config.database_url is None
    assert config.data_dir == DEFAULT_DATA_DIR == Path(".commandbus/pgdata")


def test_every_variable_is_read() -> None:
    config = Config.from_env(
        {
            "DATABASE_URL": " postgresql://u@h/db ",
            "COMMANDBUS_DATA_DIR": "/var/lib/cb",
            "MAX_RETRIES": "5",
            "VT_SECONDS": "45",
            "BACKOFF_BASE_SECONDS": "0.5",
            "BACKOFF_MULTIPLIER": "3",
            "BACKOFF_MAX_SECONDS": "60",
            "BACKOFF_JITTER_SECONDS": "0.25",
            "MAX_PAYLOAD_BYTES": "2048",
            "POLL_INTERVAL_SECONDS": "0.2",
        }
    )
    assert config.database_url == "postgresql://u@h/db"
    assert config.data_dir == Path("/var/lib/cb")
    assert config.max_retries == 5
    assert config.visibility_timeout == timedelta(seconds=45)
    assert config.backoff_base == timedelta(seconds=0.5)
    assert config.backoff_multiplier == 3.0
    assert config.backoff_max == timedelta(seconds=60)
    assert config.backoff_jitter == timedelta(seconds=0.25)
    assert config.max_payload_bytes == 2048
    assert config.poll_interval == timedelta(seconds=0.2)


def test_blank_values_mean_default() -> None:
    assert Config.from_env({"DATABASE_URL": "  ", "MAX_RETRIES": "", "VT_SECONDS": " "}) == Config()


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("MAX_RETRIES", "three"),
        ("MAX_RETRIES", "0"),
        ("MAX_RETRIES", "1.5"),
        ("VT_SECONDS", "soon"),
        ("VT_SECONDS", "4"),
        ("BACKOFF_BASE_SECONDS", "-1"),
        ("BACKOFF_MULTIPLIER", "0.5"),
        ("BACKOFF_MULTIPLIER", "nan"),
        ("BACKOFF_MAX_SECONDS", "5"),
        ("BACKOFF_MAX_SECONDS", "inf"),
        ("BACKOFF_JITTER_SECONDS", "-0.1"),
        ("MAX_PAYLOAD_BYTES", "0"),
        ("MAX_PAYLOAD_BYTES", "1MB"),
        ("POLL_INTERVAL_SECONDS", "0"),
        ("POLL_INTERVAL_SECONDS", "x"),
    ],
)
def test_bad_value_names_the_variable_and_the_value(var: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_env({var: value})
    message = str(info.value)
    assert var in message
    # the refused value as given, or (for durations) the number it parsed to
    assert value in message or f"{float(value):g}" in message
    assert "\n" not in message
