"""What every command shares: the configuration and the database it resolves to."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar
from uuid import UUID

import attrs
import click

from commandbus.config import Config
from commandbus.engine.db.embedded import open_database

if TYPE_CHECKING:
    from commandbus.engine.commands.bus import CommandBus

T = TypeVar("T")


_errors_as_json = False


def errors_as_json(on: bool) -> None:
    """Whether a command's final error line is a JSON log record (``--log-format json``)."""
    global _errors_as_json
    _errors_as_json = on


def error_line(message: str) -> str:
    """The one line a failed command prints on stderr: ``error: ...``, or with
    ``--log-format json`` a JSON record like every other line of the process."""
    if not _errors_as_json:
        return f"error: {message}"
    return json.dumps(
        {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "level": "ERROR",
            "logger": "commandbus.cli",
            "message": f"error: {message}",
        },
        ensure_ascii=False,
    )


class CLIError(click.ClickException):
    """A failure reported as one line on stderr: ``error: ...``."""

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(error_line(self.format_message()), err=True, file=file)


if TYPE_CHECKING:
    _ParamType = click.ParamType[float, Any]  # generic in the click mypy checks against
else:
    _ParamType = click.ParamType  # not subscriptable in older click


class Number(_ParamType):
    """A finite number from ``low`` to ``high`` (an integer with ``integer=True``).

    A refused value is a one-line ``error: ...`` like every other error of the
    command line, and NaN, infinities and values too large to use never pass.
    """

    def __init__(self, low: float, high: float, *, integer: bool = False, unit: str = "") -> None:
        self.low, self.high, self.integer, self.unit = low, high, integer, unit
        self.name = "integer" if integer else "number"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "N" if self.integer else "S"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        option = param.opts[0] if param is not None and param.opts else "value"
        kind = "an integer" if self.integer else "a number"
        unit = f" {self.unit}" if self.unit else ""
        low, high = (
            (f"{int(self.low)}", f"{int(self.high)}")
            if self.integer
            else (f"{self.low:g}", f"{self.high:g}")
        )
        refusal = CLIError(f"{option} must be {kind} from {low} to {high}{unit}, got {value!r}")
        if isinstance(value, bool):
            raise refusal
        if isinstance(value, int | float) and not isinstance(value, str):
            number: float = value
        else:
            text = str(value).strip()
            try:
                number = int(text) if self.integer else float(text)
            except ValueError:
                raise refusal from None
        if self.integer:
            ok = isinstance(number, int) and self.low <= number <= self.high
        else:
            ok = math.isfinite(number) and self.low <= number <= self.high
        if not ok:
            raise refusal
        return number


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h|d)?")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
#: The longest duration the command line takes (100 years, as the library's own bound).
MAX_DURATION = timedelta(days=36525)


if TYPE_CHECKING:
    _DurationType = click.ParamType[timedelta, Any]
else:
    _DurationType = click.ParamType


class Duration(_DurationType):
    """A duration such as ``90``, ``45s``, ``5m``, ``1h30m``, ``2d`` or ``250ms``.

    A plain number is seconds. Refused values are one line like other errors.
    """

    name = "duration"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, timedelta):
            return value
        option = param.opts[0] if param is not None and param.opts else "value"
        text = str(value).strip().lower().replace(" ", "")
        total = 0.0
        pos = 0
        while text and pos < len(text):
            match = _DURATION_PART.match(text, pos)
            if match is None or (match.group(2) is None and (pos or match.end() != len(text))):
                break
            total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
            pos = match.end()
        else:
            if text and math.isfinite(total) and total <= MAX_DURATION.total_seconds():
                return timedelta(seconds=total)
        raise CLIError(
            f"{option} must be a duration such as 90s, 5m, 1h30m or 2d (up to 100 years), "
            f"got {value!r}"
        )


@attrs.frozen(kw_only=True)
class Overrides:
    """Options given to ``commandbus`` itself; they win over the environment."""

    database_url: str | None = None
    data_dir: Path | None = None


def load_config(ctx: click.Context) -> Config:
    """``Config.from_env()`` with the command line's overrides applied (read once per
    command: a warning it logs, say for a deprecated variable, is said once)."""
    meta = ctx.find_root().meta
    cached = meta.get("commandbus.config")
    if isinstance(cached, Config):
        return cached
    config = Config.from_env()
    overrides = ctx.find_object(Overrides) or Overrides()
    changes = {k: v for k, v in attrs.asdict(overrides).items() if v is not None}
    config = attrs.evolve(config, **changes) if changes else config
    meta["commandbus.config"] = config
    return config


@contextmanager
def database_url(ctx: click.Context, *, logged: bool = False) -> Iterator[str]:
    """The database URL for this command (DATABASE_URL, else the embedded server,
    named in one line on stderr: a log record of ``commandbus.cli`` when ``logged``,
    so it follows ``--log-format``, else plain text)."""

    def announce(line: str) -> None:
        if logged:
            logging.getLogger("commandbus.cli").info("%s", line)
        else:
            click.echo(line, err=True)

    with open_database(load_config(ctx), announce=announce) as url:
        yield url


def os_user() -> str:
    """Who runs this process (the operator an action is recorded for by default)."""
    import getpass

    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (some containers)
        return f"uid:{os.getuid()}"


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object of the JSON read: a key given twice is refused (one would be lost)."""
    obj = dict(pairs)
    if len(obj) < len(pairs):
        seen: set[str] = set()
        for key, _value in pairs:
            if key in seen:
                raise ValueError(f"the key {key!r} is given twice")
            seen.add(key)
    return obj


def read_json(text: str, option: str) -> Any:
    """The JSON value of ``option``: given inline, or ``@FILE`` (its contents), or
    ``-`` (standard input). Anything unreadable is one :class:`CLIError` line."""
    if text == "-":
        source = "standard input"
        text = sys.stdin.read()
    elif text.startswith("@"):
        path = Path(text[1:])
        source = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise CLIError(f"{option}: cannot read {source}: {reason}") from None
    else:
        source = option
    where = "" if source == option else f" ({source})"  # the option names itself
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise CLIError(f"{option} is nested too deeply{where}") from None
    except ValueError as exc:  # not JSON, or an integer too long to read
        raise CLIError(f"{option} is not JSON{where}: {exc}") from None


def parse_uuid(value: str, what: str) -> UUID:
    """A command, batch or saga id given on the command line."""
    try:
        return UUID(value)
    except ValueError:
        raise CLIError(f"not a {what} id: {value!r}") from None


def run_with_bus(ctx: click.Context, action: Callable[[CommandBus], Awaitable[T]]) -> T:
    """Open a small CommandBus on this command's database and run ``action`` with it."""
    from commandbus.engine.commands.bus import CommandBus

    async def go(url: str) -> T:
        async with CommandBus(url, config=load_config(ctx), max_connections=2) as bus:
            return await action(bus)

    with database_url(ctx) as url:
        return asyncio.run(go(url))


def otel_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--otel``: export traces and metrics over OTLP (as ``COMMANDBUS_OTEL=1`` does)."""
    return click.option(
        "--otel",
        is_flag=True,
        help="Export traces and metrics with OpenTelemetry (OTLP, configured by the "
        "OTEL_* variables), as COMMANDBUS_OTEL=1 does; needs 'commandbus[otel]'.",
    )(f)


def log_format_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--log-format text|json``: how every logger (the library's and yours) writes to stderr."""
    return click.option(
        "--log-format",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        help="Log lines as text or as one JSON object each (with the correlation, "
        "trace and span ids).",
    )(f)


def log_level_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--log-level debug|info|warning|error``: the least important records printed."""
    return click.option(
        "--log-level",
        type=click.Choice(["debug", "info", "warning", "error", "critical"], case_sensitive=False),
        default="info",
        show_default=True,
        help="The least important log records printed, of every logger: the library's "
        "and your handlers' own (logging.getLogger(...)).",
    )(f)


def setup_otel(otel: bool, service_name: str) -> None:
    """Set up the OpenTelemetry SDK when ``--otel`` is given (a ConfigError if missing)."""
    if otel:
        from commandbus.engine.observability.tracing import configure_tracing

        configure_tracing(service_name=service_name)


def page_options(
    what: str,
    largest: int,
    cursor_help: str = "Go on after a previous page (printed when there is more).",
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--limit N`` (``what`` per page, 1 to ``largest``, 50 by default) and ``--cursor``."""

    def add(f: Callable[..., Any]) -> Callable[..., Any]:
        f = click.option("--cursor", help=cursor_help)(f)
        return click.option(
            "--limit",
            type=click.IntRange(1, largest),
            default=50,
            show_default=True,
            help=f"{what} per page (1-{largest}).",
        )(f)

    return add
