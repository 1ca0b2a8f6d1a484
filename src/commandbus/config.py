"""Immutable, validated configuration.

``Config.from_env()`` reads the environment; every error names the variable and
the value that was refused.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Self

import attrs

from commandbus.errors import ConfigError

DEFAULT_DATA_DIR = Path(".commandbus") / "pgdata"


@attrs.frozen(kw_only=True)
class Config:
    """Settings shared by the bus, workers and the CLI.

    Durations are ``timedelta``; the environment gives them in seconds.
    """

    #: DSN of the PostgreSQL server; None means "start the embedded server".
    database_url: str | None = None
    #: Where the embedded server keeps its data (created on first start, reused).
    data_dir: Path = DEFAULT_DATA_DIR
    #: Attempts a command gets before it lands in the troubleshooting queue.
    max_retries: int = 3
    #: How long a read message stays invisible to other workers.
    visibility_timeout: timedelta = timedelta(seconds=30)
    #: First retry delay; later ones grow by ``backoff_multiplier`` up to ``backoff_max``.
    backoff_base: timedelta = timedelta(seconds=10)
    backoff_multiplier: float = 2.0
    backoff_max: timedelta = timedelta(seconds=300)
    #: Random extra delay, up to this much, added to each retry.
    backoff_jitter: timedelta = timedelta(0)
    #: Largest serialised command data (bytes) that ``send`` accepts.
    max_payload_bytes: int = 1_048_576
    #: How often an idle worker polls when no notification arrives.
    poll_interval: timedelta = timedelta(seconds=1)

    def __attrs_post_init__(self) -> None:
        if self.max_retries < 1:
            raise ConfigError(f"MAX_RETRIES must be >= 1, got {self.max_retries!r}")
        if self.visibility_timeout < timedelta(seconds=5):
            raise ConfigError(
                f"VT_SECONDS must be >= 5, got {self.visibility_timeout.total_seconds():g}"
            )
        if self.backoff_base < timedelta(0):
            raise ConfigError(
                f"BACKOFF_BASE_SECONDS must be >= 0, got {self.backoff_base.total_seconds():g}"
            )
        if self.backoff_multiplier < 1:
            raise ConfigError(f"BACKOFF_MULTIPLIER must be >= 1, got {self.backoff_multiplier!r}")
        if self.backoff_max < self.backoff_base:
            raise ConfigError(
                "BACKOFF_MAX_SECONDS must be >= BACKOFF_BASE_SECONDS, got "
                f"{self.backoff_max.total_seconds():g} < {self.backoff_base.total_seconds():g}"
            )
        if self.backoff_jitter < timedelta(0):
            raise ConfigError(
                f"BACKOFF_JITTER_SECONDS must be >= 0, got {self.backoff_jitter.total_seconds():g}"
            )
        if self.max_payload_bytes < 1:
            raise ConfigError(f"MAX_PAYLOAD_BYTES must be >= 1, got {self.max_payload_bytes!r}")
        if self.poll_interval <= timedelta(0):
            raise ConfigError(
                f"POLL_INTERVAL_SECONDS must be > 0, got {self.poll_interval.total_seconds():g}"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        """Build a config from environment variables (see the README's table)."""
        env = os.environ if environ is None else environ
        kwargs: dict[str, Any] = {}
        url = env.get("DATABASE_URL", "").strip()
        if url:
            kwargs["database_url"] = url
        data_dir = env.get("COMMANDBUS_DATA_DIR", "").strip()
        if data_dir:
            kwargs["data_dir"] = Path(data_dir)
        for var, field, parse in _NUMERIC_VARS:
            raw = env.get(var)
            if raw is None or not raw.strip():
                continue
            kwargs[field] = parse(var, raw.strip())
        return cls(**kwargs)


def _int(var: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{var} must be an integer, got {raw!r}") from None


def _float(var: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{var} must be a number, got {raw!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(f"{var} must be a finite number, got {raw!r}")
    return value


def _seconds(var: str, raw: str) -> timedelta:
    return timedelta(seconds=_float(var, raw))


_NUMERIC_VARS: tuple[tuple[str, str, Callable[[str, str], Any]], ...] = (
    ("MAX_RETRIES", "max_retries", _int),
    ("VT_SECONDS", "visibility_timeout", _seconds),
    ("BACKOFF_BASE_SECONDS", "backoff_base", _seconds),
    ("BACKOFF_MULTIPLIER", "backoff_multiplier", _float),
    ("BACKOFF_MAX_SECONDS", "backoff_max", _seconds),
    ("BACKOFF_JITTER_SECONDS", "backoff_jitter", _seconds),
    ("MAX_PAYLOAD_BYTES", "max_payload_bytes", _int),
    ("POLL_INTERVAL_SECONDS", "poll_interval", _seconds),
)
