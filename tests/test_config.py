"""Config.from_env: defaults, parsing, and errors that name the variable and value."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from commandbus import (
    Command,
    CommandBus,
    CommandStatus,
    HandlerContext,
    HandlerRegistry,
    TransientCommandError,
    Worker,
)
from commandbus.config import (
    MAX_DURATION,
    MAX_INT4,
    MAX_VISIBILITY_TIMEOUT,
    Config,
)
from commandbus.errors import ConfigError
from support import wait_for


def test_defaults_from_an_empty_environment() -> None:
    config = Config.from_env({})
    assert config == Config()
    assert config.database_url is None
    assert config.data_dir is None  # found when needed: see tests/test_data_dir.py


def test_every_variable_is_read() -> None:
    config = Config.from_env(
        {
            "DATABASE_URL": " postgresql://u@h/db ",
            "COMMANDBUS_DATA_DIR": "/var/lib/cb",
            "MAX_ATTEMPTS": "5",
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
    assert config.max_attempts == 5
    assert config.visibility_timeout == timedelta(seconds=45)
    assert config.backoff_base == timedelta(seconds=0.5)
    assert config.backoff_multiplier == 3.0
    assert config.backoff_max == timedelta(seconds=60)
    assert config.backoff_jitter == timedelta(seconds=0.25)
    assert config.max_payload_bytes == 2048
    assert config.poll_interval == timedelta(seconds=0.2)


def test_blank_values_mean_default() -> None:
    assert (
        Config.from_env({"DATABASE_URL": "  ", "MAX_ATTEMPTS": "", "VT_SECONDS": " "}) == Config()
    )


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("MAX_ATTEMPTS", "three"),
        ("MAX_ATTEMPTS", "0"),
        ("MAX_ATTEMPTS", "1.5"),
        ("VT_SECONDS", "soon"),
        ("VT_SECONDS", "0.5"),  # below 1 s (MIN_VISIBILITY_TIMEOUT)
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


# -- bounds: every numeric value must fit what uses it (timedelta, int4 columns, jsonb) ----


@pytest.mark.parametrize(
    ("var", "value", "bound"),
    [
        ("MAX_ATTEMPTS", "2147483648", "2147483647"),  # max_attempts is an int4 column
        ("MAX_ATTEMPTS", "-3", "2147483647"),
        ("MAX_ATTEMPTS", "9" * 5000, "2147483647"),  # longer than int() parses
        ("VT_SECONDS", "1e14", "604800"),  # past timedelta's range
        ("VT_SECONDS", "604801", "604800"),
        ("VT_SECONDS", "nan", "604800"),
        ("VT_SECONDS", "-inf", "604800"),
        ("BACKOFF_BASE_SECONDS", "1e10", "3155760000"),
        ("BACKOFF_BASE_SECONDS", "inf", "3155760000"),
        ("BACKOFF_MULTIPLIER", "inf", "finite"),
        ("BACKOFF_MULTIPLIER", "-2", ">= 1"),
        ("BACKOFF_MAX_SECONDS", "1e300", "3155760000"),
        ("BACKOFF_MAX_SECONDS", "-1", "3155760000"),
        ("BACKOFF_JITTER_SECONDS", "1e10", "3155760000"),
        ("BACKOFF_JITTER_SECONDS", "nan", "3155760000"),
        ("MAX_PAYLOAD_BYTES", "268435456", "268435455"),  # more than a jsonb value holds
        ("MAX_PAYLOAD_BYTES", "-1", "268435455"),
        ("POLL_INTERVAL_SECONDS", "1e-9", "0.000001"),  # rounds to a zero timedelta
        ("POLL_INTERVAL_SECONDS", "-1", "0.000001"),
        ("POLL_INTERVAL_SECONDS", "1e20", "3155760000"),
    ],
)
def test_out_of_range_values_are_config_errors_naming_the_bound(
    var: str, value: str, bound: str
) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_env({var: value})
    message = str(info.value)
    assert message.startswith(var), message
    assert bound in message
    assert value[:20] in message
    assert len(message) < 300 and "\n" not in message


def test_the_bounds_themselves_are_accepted() -> None:
    config = Config.from_env(
        {
            "MAX_ATTEMPTS": "2147483647",
            "VT_SECONDS": "604800",
            "BACKOFF_BASE_SECONDS": "3155760000",
            "BACKOFF_MULTIPLIER": "1e300",
            "BACKOFF_MAX_SECONDS": "3155760000",
            "BACKOFF_JITTER_SECONDS": "3.15576e9",
            "MAX_PAYLOAD_BYTES": "268435455",
            "POLL_INTERVAL_SECONDS": "0.000001",
        }
    )
    assert config.max_attempts == MAX_INT4
    assert config.visibility_timeout == MAX_VISIBILITY_TIMEOUT == timedelta(days=7)
    assert config.backoff_max == config.backoff_jitter == MAX_DURATION
    assert config.poll_interval == timedelta(microseconds=1)


@pytest.mark.parametrize(
    ("changes", "var", "bound"),
    [
        ({"max_attempts": 2**31}, "MAX_ATTEMPTS", "2147483647"),
        ({"max_attempts": 1.5}, "MAX_ATTEMPTS", "integer"),
        ({"max_attempts": "3"}, "MAX_ATTEMPTS", "integer"),
        ({"max_attempts": True}, "MAX_ATTEMPTS", "integer"),
        ({"visibility_timeout": timedelta(days=999_999_999)}, "VT_SECONDS", "604800"),
        ({"visibility_timeout": 30}, "VT_SECONDS", "timedelta"),
        ({"backoff_base": timedelta(seconds=-1)}, "BACKOFF_BASE_SECONDS", "3155760000"),
        ({"backoff_multiplier": float("nan")}, "BACKOFF_MULTIPLIER", "finite"),
        ({"backoff_multiplier": float("inf")}, "BACKOFF_MULTIPLIER", "finite"),
        ({"backoff_multiplier": "2"}, "BACKOFF_MULTIPLIER", "number"),
        (
            {"backoff_max": timedelta(days=50_000), "backoff_base": timedelta(0)},
            "BACKOFF_MAX_SECONDS",
            "3155760000",
        ),
        ({"backoff_jitter": timedelta(days=-1)}, "BACKOFF_JITTER_SECONDS", "3155760000"),
        ({"max_payload_bytes": 2**40}, "MAX_PAYLOAD_BYTES", "268435455"),
        ({"poll_interval": timedelta(0)}, "POLL_INTERVAL_SECONDS", "0.000001"),
        ({"poll_interval": None}, "POLL_INTERVAL_SECONDS", "timedelta"),
    ],
)
def test_the_constructor_checks_the_same_bounds(
    changes: dict[str, Any], var: str, bound: str
) -> None:
    with pytest.raises(ConfigError) as info:
        Config(**changes)
    message = str(info.value)
    assert message.startswith(var), message
    assert bound in message
    assert "\n" not in message


async def test_the_largest_accepted_values_work_against_postgresql(dsn: str) -> None:
    """A command sent, read, failed and rescheduled with every bound at its maximum."""
    config = Config(
        max_attempts=MAX_INT4,
        visibility_timeout=MAX_VISIBILITY_TIMEOUT,
        backoff_base=MAX_DURATION,
        backoff_multiplier=1e300,
        backoff_max=MAX_DURATION,
        backoff_jitter=MAX_DURATION,
        poll_interval=timedelta(milliseconds=50),
    )
    registry = HandlerRegistry()

    @registry.handler("bounds", "Flaky")
    async def flaky(cmd: Command, ctx: HandlerContext) -> None:
        raise TransientCommandError("try again much later")

    async with CommandBus(dsn, config=config) as bus:
        sent = (await bus.send("bounds", "Flaky", {})).unwrap()
        command = await bus.get_command("bounds", sent.command_id)
        assert command is not None and command.max_attempts == MAX_INT4

        async def rescheduled() -> bool:
            found = await bus.get_command("bounds", sent.command_id)
            return found is not None and found.status is CommandStatus.RETRY_SCHEDULED

        async with Worker(dsn, registry, domain="bounds", config=config):
            await wait_for(rescheduled, timeout=30)
        history = await bus.command_history("bounds", sent.command_id)
        retry = history[-1]
        assert retry.event_type == "CommandRetryScheduled"
        assert MAX_DURATION.total_seconds() <= retry.data["delay_seconds"]
        assert retry.data["delay_seconds"] <= 2 * MAX_DURATION.total_seconds()
        async with bus.pool.connection() as conn:
            cur = await conn.execute("SELECT vt - clock_timestamp() FROM pgmq.q_bounds")
            row = await cur.fetchone()
        assert row is not None and row[0] >= MAX_DURATION - timedelta(days=1)


def test_the_old_max_retries_names_still_work_with_a_deprecation_warning() -> None:
    with pytest.warns(DeprecationWarning, match="MAX_ATTEMPTS"):
        config = Config.from_env({"MAX_RETRIES": "7"})
    assert config.max_attempts == 7
    with pytest.warns(DeprecationWarning, match="max_attempts"):
        assert config.max_retries == 7
    # the new name wins, silently
    assert Config.from_env({"MAX_RETRIES": "7", "MAX_ATTEMPTS": "2"}).max_attempts == 2


@pytest.mark.parametrize(
    ("kwargs", "var"),
    [({"database_url": 5}, "DATABASE_URL"), ({"data_dir": 5}, "COMMANDBUS_DATA_DIR")],
)
def test_wrong_types_for_the_database_settings(kwargs: dict[str, object], var: str) -> None:
    with pytest.raises(ConfigError, match=var):
        Config(**kwargs)  # type: ignore[arg-type]


def test_a_data_dir_given_as_text_becomes_a_path() -> None:
    assert Config(data_dir="x/y").data_dir == Path("x/y")  # type: ignore[arg-type]


@pytest.mark.parametrize("raw", ["abc", "0", "2147483648"])
def test_a_bad_max_retries_is_named_as_the_user_set_it(raw: str) -> None:
    with pytest.warns(DeprecationWarning), pytest.raises(ConfigError, match="MAX_RETRIES"):
        Config.from_env({"MAX_RETRIES": raw})


def test_max_retries_beside_max_attempts_is_ignored_with_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level("WARNING", logger="commandbus.config"):
        assert Config.from_env({"MAX_RETRIES": "abc", "MAX_ATTEMPTS": "4"}).max_attempts == 4
    assert "MAX_RETRIES is ignored" in caplog.text
