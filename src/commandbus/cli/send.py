"""``commandbus send``: send one command from the shell."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import click

from commandbus.cli._common import (
    CLIError,
    Duration,
    Number,
    parse_uuid,
    read_json,
    run_with_bus,
)
from commandbus.results import Failure

MAX_INT = 2**31 - 1


def read_data(text: str) -> dict[str, Any]:
    """``--data``: a JSON object, or ``@FILE`` (its contents), or ``-`` (standard input)."""
    data = read_json(text, "--data")
    if not isinstance(data, dict):
        where = "" if not text.startswith("@") and text != "-" else f" ({_source(text)})"
        raise CLIError(f"--data must be a JSON object, got {type(data).__name__}{where}")
    return data


def _source(text: str) -> str:
    return "standard input" if text == "-" else text[1:]


@click.command()
@click.argument("domain")
@click.argument("command_type", metavar="TYPE")
@click.option(
    "--data",
    "data_text",
    default="{}",
    show_default=True,
    metavar="JSON|@FILE|-",
    help="The command's data: a JSON object, @FILE to read it from a file, - from stdin.",
)
@click.option("--id", "command_id", metavar="UUID", help="The command id (default: a new one).")
@click.option(
    "--correlation-id",
    metavar="UUID",
    help="The correlation id (default: the command id).",
)
@click.option(
    "--delay",
    type=Duration(),
    help="Run it no sooner than this from now (seconds, or e.g. 90s, 5m, 1h30m).",
)
@click.option(
    "--max-attempts",
    type=Number(1, MAX_INT, integer=True),
    help="Attempts before it goes to the troubleshooting queue (default: MAX_ATTEMPTS).",
)
@click.pass_context
def send(
    ctx: click.Context,
    domain: str,
    command_type: str,
    data_text: str,
    command_id: str | None,
    correlation_id: str | None,
    delay: timedelta | None,
    max_attempts: int | None,
) -> None:
    """Send a command of TYPE to DOMAIN's queue; prints its id.

    The command, its first event and its queue message are written in one
    transaction. A command id the domain already has is refused (nothing written).
    """
    data = read_data(data_text)
    cid = None if command_id is None else parse_uuid(command_id, "command")
    corr = None if correlation_id is None else parse_uuid(correlation_id, "correlation")
    result = run_with_bus(
        ctx,
        lambda bus: bus.send(
            domain,
            command_type,
            data,
            command_id=cid,
            correlation_id=corr,
            delay=delay,
            max_attempts=max_attempts,
        ),
    )
    if isinstance(result, Failure):
        raise CLIError(result.message)
    sent = result.unwrap()
    click.echo(str(sent.command_id))
    click.echo(
        f"sent {domain}/{command_type} as message {sent.msg_id}"
        f" (correlation {sent.correlation_id})",
        err=True,
    )
