"""What every command shares: the configuration and the database it resolves to."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
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


class CLIError(click.ClickException):
    """A failure reported as one line on stderr: ``error: ...``."""

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True, file=file)


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
        refusal = CLIError(
            f"{option} must be {kind} from {self.low:g} to {self.high:g}{unit}, got {value!r}"
        )
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


@attrs.frozen(kw_only=True)
class Overrides:
    """Options given to ``commandbus`` itself; they win over the environment."""

    database_url: str | None = None
    data_dir: Path | None = None


def load_config(ctx: click.Context) -> Config:
    """``Config.from_env()`` with the command line's overrides applied."""
    config = Config.from_env()
    overrides = ctx.find_object(Overrides) or Overrides()
    changes = {k: v for k, v in attrs.asdict(overrides).items() if v is not None}
    return attrs.evolve(config, **changes) if changes else config


@contextmanager
def database_url(ctx: click.Context) -> Iterator[str]:
    """The database URL for this command (DATABASE_URL, else the embedded server)."""
    with open_database(load_config(ctx)) as url:
        yield url


def parse_uuid(value: str, what: str) -> UUID:
    """A command or batch id given on the command line."""
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
