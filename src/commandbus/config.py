"""Immutable, validated configuration, and where the embedded database lives.

``Config.from_env()`` reads the environment; every error names the variable and
the value that was refused. :func:`find_data_dir` decides the embedded server's
data directory when none is configured.
"""

from __future__ import annotations

import logging
import math
import os
import pwd
import re
import warnings
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, Self

import attrs

from commandbus.errors import ConfigError

_log = logging.getLogger("commandbus.config")

#: A directory of this name marks a project: the embedded data is ``.commandbus/pgdata``
#: in the nearest one found from the working directory upward.
PROJECT_DIR_NAME: Final = ".commandbus"

#: The largest ``MAX_ATTEMPTS``: attempts are stored in an ``integer`` (int4) column.
MAX_INT4: Final = 2**31 - 1
#: The largest ``MAX_PAYLOAD_BYTES``: the most a PostgreSQL ``jsonb`` value can hold.
MAX_JSONB_BYTES: Final = 2**28 - 1
#: The shortest and longest visibility timeout: VT_SECONDS, ``commandbus worker --vt``,
#: ``Worker(visibility_timeout=)`` and ``ctx.extend_visibility`` all take this range.
MIN_VISIBILITY_TIMEOUT: Final = timedelta(seconds=1)
MAX_VISIBILITY_TIMEOUT: Final = timedelta(days=7)
#: The longest backoff, jitter or poll interval: far inside what ``timedelta`` and
#: PostgreSQL timestamps can hold.
MAX_DURATION: Final = timedelta(days=36525)  # 100 years


@attrs.frozen(kw_only=True)
class Config:
    """Settings shared by the bus, workers and the CLI.

    Durations are ``timedelta``; the environment gives them in seconds.
    """

    #: DSN of the PostgreSQL server; None means "start the embedded server".
    database_url: str | None = None
    #: Where the embedded server keeps its data (created on first start, reused);
    #: None: found by :func:`find_data_dir` when the embedded server is needed.
    data_dir: Path | None = None
    #: Attempts a command gets before it lands in the troubleshooting queue.
    max_attempts: int = 3
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
        if self.database_url is not None and not isinstance(self.database_url, str):
            raise ConfigError(f"DATABASE_URL must be a string, got {_show(self.database_url)}")
        if self.data_dir is not None and not isinstance(self.data_dir, Path):
            if not isinstance(self.data_dir, str) or not self.data_dir.strip():
                raise ConfigError(f"COMMANDBUS_DATA_DIR must be a path, got {_show(self.data_dir)}")
            object.__setattr__(self, "data_dir", Path(self.data_dir))
        for var, value in (
            ("MAX_ATTEMPTS", self.max_attempts),
            ("MAX_PAYLOAD_BYTES", self.max_payload_bytes),
        ):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{var} must be an integer, got {_show(value)}")
            _check_int(var, value, _show(value))
        for var, duration in (
            ("VT_SECONDS", self.visibility_timeout),
            ("BACKOFF_BASE_SECONDS", self.backoff_base),
            ("BACKOFF_MAX_SECONDS", self.backoff_max),
            ("BACKOFF_JITTER_SECONDS", self.backoff_jitter),
            ("POLL_INTERVAL_SECONDS", self.poll_interval),
        ):
            if not isinstance(duration, timedelta):
                raise ConfigError(f"{var} must be a timedelta, got {_show(duration)}")
            seconds = duration.total_seconds()
            _check_seconds(var, seconds, f"{seconds:g}")
        multiplier = self.backoff_multiplier
        if isinstance(multiplier, bool) or not isinstance(multiplier, int | float):
            raise ConfigError(f"BACKOFF_MULTIPLIER must be a number, got {_show(multiplier)}")
        _check_multiplier(float(multiplier), _show(multiplier))
        if self.backoff_max < self.backoff_base:
            raise ConfigError(
                "BACKOFF_MAX_SECONDS must be >= BACKOFF_BASE_SECONDS, got "
                f"{self.backoff_max.total_seconds():g} < {self.backoff_base.total_seconds():g}"
            )

    @property
    def max_retries(self) -> int:
        """Deprecated name of :attr:`max_attempts` (it always counted attempts)."""
        warnings.warn(
            "Config.max_retries is deprecated: use max_attempts", DeprecationWarning, stacklevel=2
        )
        return self.max_attempts

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        """Build a config from environment variables (see the README's table).

        ``MAX_RETRIES``, the old name of ``MAX_ATTEMPTS``, is still read (with a
        DeprecationWarning) when ``MAX_ATTEMPTS`` is not set.
        """
        env = os.environ if environ is None else environ
        old = env.get("MAX_RETRIES", "").strip()
        kwargs: dict[str, Any] = {}
        if old:
            if env.get("MAX_ATTEMPTS", "").strip():
                _log.warning("MAX_RETRIES is ignored: MAX_ATTEMPTS is set (and replaces it)")
            else:
                message = "MAX_RETRIES is deprecated: set MAX_ATTEMPTS (it counts attempts)"
                _log.warning("%s", message)
                warnings.warn(message, DeprecationWarning, stacklevel=2)
                kwargs["max_attempts"] = _int("MAX_RETRIES", old)
        url, data_dir = database_from_env(env)
        if url:
            kwargs["database_url"] = url
        if data_dir is not None:
            kwargs["data_dir"] = data_dir
        for var, field, parse in _NUMERIC_VARS:
            raw = env.get(var)
            if raw is None or not raw.strip():
                continue
            kwargs[field] = parse(var, raw.strip())
        return cls(**kwargs)


def database_from_env(environ: Mapping[str, str] | None = None) -> tuple[str | None, Path | None]:
    """``DATABASE_URL`` and ``COMMANDBUS_DATA_DIR`` (None when unset or blank)."""
    env = os.environ if environ is None else environ
    url = env.get("DATABASE_URL", "").strip() or None
    data_dir = env.get("COMMANDBUS_DATA_DIR", "").strip()
    return url, Path(data_dir) if data_dir else None


#: Each integer variable's range and what its top is.
_INT_BOUNDS: Final[dict[str, tuple[int, int, str]]] = {
    "MAX_ATTEMPTS": (1, MAX_INT4, "attempts are an int4 column"),
    "MAX_RETRIES": (1, MAX_INT4, "the old name of MAX_ATTEMPTS"),
    "MAX_PAYLOAD_BYTES": (1, MAX_JSONB_BYTES, "the most a jsonb value holds"),
}

#: Each duration's range in seconds and what its top is.
_SECONDS_BOUNDS: Final[dict[str, tuple[float, float, str]]] = {
    "VT_SECONDS": (
        MIN_VISIBILITY_TIMEOUT.total_seconds(),
        MAX_VISIBILITY_TIMEOUT.total_seconds(),
        "7 days",
    ),
    "BACKOFF_BASE_SECONDS": (0, MAX_DURATION.total_seconds(), "100 years"),
    "BACKOFF_MAX_SECONDS": (0, MAX_DURATION.total_seconds(), "100 years"),
    "BACKOFF_JITTER_SECONDS": (0, MAX_DURATION.total_seconds(), "100 years"),
    # one microsecond: a shorter interval is a zero timedelta
    "POLL_INTERVAL_SECONDS": (0.000001, MAX_DURATION.total_seconds(), "100 years"),
}

_INTEGER = re.compile(r"[+-]?[0-9]+")


def _show(value: object) -> str:
    """``repr(value)``, cut short for messages."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _number(value: float) -> str:
    """5 -> ``5``, 1e-06 -> ``0.000001``, 3155760000.0 -> ``3155760000``."""
    return f"{value:.6f}".rstrip("0").rstrip(".")


def _check_int(var: str, value: int, shown: str) -> None:
    low, high, why = _INT_BOUNDS[var]
    if not low <= value <= high:
        raise ConfigError(f"{var} must be an integer from {low} to {high} ({why}), got {shown}")


def _check_seconds(var: str, seconds: float, shown: str) -> None:
    low, high, why = _SECONDS_BOUNDS[var]
    if not (math.isfinite(seconds) and low <= seconds <= high):
        raise ConfigError(
            f"{var} must be a number of seconds from {_number(low)} to {_number(high)} "
            f"({why}), got {shown}"
        )


def _check_multiplier(value: float, shown: str) -> None:
    if not (math.isfinite(value) and value >= 1):
        raise ConfigError(f"BACKOFF_MULTIPLIER must be a finite number >= 1, got {shown}")


def _int(var: str, raw: str) -> int:
    if not _INTEGER.fullmatch(raw):
        raise ConfigError(f"{var} must be an integer, got {_show(raw)}")
    # int() refuses very long text; anything that long is out of range anyway
    too_big = MAX_INT4 * MAX_INT4 * (-1 if raw.startswith("-") else 1)
    value = int(raw) if len(raw) <= 30 else too_big
    _check_int(var, value, _show(raw))
    return value


def _float(var: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{var} must be a number, got {_show(raw)}") from None


def _multiplier(var: str, raw: str) -> float:
    value = _float(var, raw)
    _check_multiplier(value, _show(raw))
    return value


def _seconds(var: str, raw: str) -> timedelta:
    seconds = _float(var, raw)
    _check_seconds(var, seconds, _show(raw))
    return timedelta(seconds=seconds)


_NUMERIC_VARS: tuple[tuple[str, str, Callable[[str, str], Any]], ...] = (
    ("MAX_ATTEMPTS", "max_attempts", _int),
    ("VT_SECONDS", "visibility_timeout", _seconds),
    ("BACKOFF_BASE_SECONDS", "backoff_base", _seconds),
    ("BACKOFF_MULTIPLIER", "backoff_multiplier", _multiplier),
    ("BACKOFF_MAX_SECONDS", "backoff_max", _seconds),
    ("BACKOFF_JITTER_SECONDS", "backoff_jitter", _seconds),
    ("MAX_PAYLOAD_BYTES", "max_payload_bytes", _int),
    ("POLL_INTERVAL_SECONDS", "poll_interval", _seconds),
)


# -- where the embedded database lives ---------------------------------------------------


@attrs.frozen
class DataDirChoice:
    """The embedded server's data directory and why it is that one."""

    #: Absolute path of the data directory (it may not exist yet).
    path: Path
    #: Why, for the line printed when the server is used, e.g. ``set by COMMANDBUS_DATA_DIR``.
    why: str


def find_data_dir(
    data_dir: Path | None = None,
    *,
    cwd: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> DataDirChoice:
    """The embedded server's data directory, the first of:

    1. ``data_dir`` when given (``COMMANDBUS_DATA_DIR`` or ``--data-dir``; a
       relative path is taken from ``cwd``);
    2. ``.commandbus/pgdata`` in the nearest directory holding a ``.commandbus``
       directory, searching from ``cwd`` upward (as git finds ``.git``) up to the
       home directory when ``cwd`` is inside it, else up to the root;
    3. the per-user default, ``$XDG_DATA_HOME/commandbus/pgdata``
       (``~/.local/share/commandbus/pgdata`` when ``XDG_DATA_HOME`` is unset).

    Reads the file system, never writes it. Without a home directory the
    per-user default is a :class:`ConfigError`.
    """
    env = os.environ if environ is None else environ
    explicit = data_dir.expanduser() if data_dir is not None else None
    if explicit is not None and explicit.is_absolute() and cwd is None:
        here = explicit  # no need for a working directory
    else:
        try:
            here = Path(os.path.abspath(cwd if cwd is not None else Path.cwd()))
        except OSError as exc:  # the working directory was removed
            raise ConfigError(
                f"cannot find the embedded database from the working directory "
                f"({exc.strerror}): set COMMANDBUS_DATA_DIR or DATABASE_URL"
            ) from None
    if explicit is not None:
        return DataDirChoice(
            path=Path(os.path.abspath(here / explicit)),
            why="set by COMMANDBUS_DATA_DIR or --data-dir",
        )
    home = _home(env)
    for folder in (here, *here.parents):
        if (folder / PROJECT_DIR_NAME).is_dir():
            where = "the current directory" if folder == here else f"{here}"
            return DataDirChoice(
                path=folder / PROJECT_DIR_NAME / "pgdata",
                why=f"the project's {PROJECT_DIR_NAME} directory, found from {where}",
            )
        if home is not None and folder == home:
            break
    if home is None:
        raise ConfigError(
            f"no {PROJECT_DIR_NAME} directory in {here} or above, and no home directory "
            "for the per-user default: set COMMANDBUS_DATA_DIR or DATABASE_URL"
        )
    xdg = env.get("XDG_DATA_HOME", "").strip()
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else home / ".local" / "share"
    return DataDirChoice(
        path=base / "commandbus" / "pgdata",
        why=f"the per-user default: no {PROJECT_DIR_NAME} directory in {here} or above",
    )


def _home(env: Mapping[str, str]) -> Path | None:
    """The home directory: ``HOME`` (if absolute), else the password database's; or None."""
    raw = env.get("HOME", "").strip()
    if raw:
        return Path(os.path.abspath(raw)) if Path(raw).is_absolute() else None
    if env is not os.environ:
        return None
    try:
        return Path(os.path.abspath(pwd.getpwuid(os.getuid()).pw_dir))
    except KeyError:
        return None
