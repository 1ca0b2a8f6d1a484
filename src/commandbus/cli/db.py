"""``commandbus db``: the embedded PostgreSQL server."""

from __future__ import annotations

import json

import click

from commandbus.cli._common import CLIError, load_config
from commandbus.config import DataDirChoice, find_data_dir
from commandbus.engine.db.embedded import (
    embedded_allowed,
    embedded_status,
    start_embedded,
    stop_embedded,
)

#: Exit status of ``db status`` when the server is not running (as ``pg_ctl status``).
NOT_RUNNING = 3


def _data_dir(ctx: click.Context) -> DataDirChoice:
    """The data directory every command would use (see ``find_data_dir``); with a
    database URL set, a note on stderr that the other commands use that instead."""
    config = load_config(ctx)
    if config.database_url:
        click.echo(
            "note: a database URL is set (DATABASE_URL or --database-url): the other "
            "commands use that server, not this embedded one",
            err=True,
        )
    return find_data_dir(config.data_dir)


@click.group()
def db() -> None:
    """Manage the embedded PostgreSQL (COMMANDBUS_DATA_DIR, else the nearest
    .commandbus directory upward, else the per-user default)."""


@db.command()
@click.pass_context
def start(ctx: click.Context) -> None:
    """Start the embedded server and leave it running; print its URL."""
    embedded_allowed()  # COMMANDBUS_EMBEDDED=off: never, not even when asked here
    choice = _data_dir(ctx)
    url = start_embedded(choice.path)
    click.echo(
        f"embedded PostgreSQL in {choice.path} ({choice.why}), running until `commandbus db stop`",
        err=True,
    )
    click.echo(url)


@db.command()
@click.pass_context
def stop(ctx: click.Context) -> None:
    """Stop the embedded server."""
    data_dir = embedded_status(_data_dir(ctx).path).data_dir
    if stop_embedded(data_dir):
        click.echo(f"stopped the embedded PostgreSQL in {data_dir}")
    else:
        click.echo(f"the embedded PostgreSQL in {data_dir} was not running")


@db.command()
@click.pass_context
def url(ctx: click.Context) -> None:
    """Print the URL of the running embedded server."""
    status = embedded_status(_data_dir(ctx).path)
    if status.url is None:
        raise CLIError(
            f"the embedded PostgreSQL in {status.data_dir} is not running: "
            "run `commandbus db start`"
        )
    click.echo(status.url)


@db.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show the embedded server's state; exit status 3 when it is not running."""
    choice = _data_dir(ctx)
    st = embedded_status(choice.path)
    if as_json:
        state = "running" if st.running else "stopped" if st.initialized else "not initialised"
        click.echo(
            json.dumps(
                {
                    "data_dir": str(st.data_dir),
                    "why": choice.why,
                    "state": state,
                    "pid": st.pid,
                    "url": st.url,
                    "until_db_stop": st.keep_running,
                }
            )
        )
        if not st.running:
            ctx.exit(NOT_RUNNING)
        return
    click.echo(f"data directory: {st.data_dir} ({choice.why})")
    if not st.initialized:
        click.echo("state: not initialised (created on first start)")
    elif not st.running:
        click.echo("state: stopped")
    else:
        mode = "until `commandbus db stop`" if st.keep_running else "while a process uses it"
        click.echo(f"state: running (pid {st.pid}, {mode})")
        click.echo(f"url: {st.url}")
    if not st.running:
        ctx.exit(NOT_RUNNING)
