"""``commandbus tsq``: the troubleshooting queue for operators."""

from __future__ import annotations

import json
from typing import TypeVar

import click

from commandbus.cli._common import os_user, page_options, parse_uuid, read_json, run_with_bus
from commandbus.cli.listing import table
from commandbus.codec import unstructure
from commandbus.engine.commands.read import MAX_PAGE, CommandFilter

T = TypeVar("T")


@click.group()
def tsq() -> None:
    """List and resolve commands in the troubleshooting queue."""


@tsq.command("list")
@click.option("--domain", help="Only this domain.")
@click.option("--type", "command_type", help="Only this command type.")
@click.option("--error", "error", help="Only commands whose last error contains this text.")
@page_options("Commands", MAX_PAGE)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def list_(
    ctx: click.Context,
    domain: str | None,
    command_type: str | None,
    error: str | None,
    limit: int,
    cursor: str | None,
    as_json: bool,
) -> None:
    """Commands waiting for an operator, oldest first."""
    where = CommandFilter(domain=domain, command_type=command_type, error_contains=error)
    page = run_with_bus(
        ctx, lambda bus: bus.troubleshooting.list(where, limit=limit, cursor=cursor)
    )
    if as_json:
        for c in page.items:
            click.echo(json.dumps(unstructure(c)))
    else:
        # the same table as `commandbus list`: a header, aligned columns
        for line in table(page.items):
            click.echo(line)
    if not as_json:
        click.echo(f"{len(page.items)} command(s) in the troubleshooting queue", err=True)
    if page.next_cursor is not None:
        click.echo(f"more: --cursor {page.next_cursor}", err=True)


@tsq.command()
@click.argument("domain")
@click.argument("command_id")
@click.option("--reason", help="Why (recorded in the event).")
@click.option("--operator", help="Who did it (recorded in the event; default: your OS user).")
@click.pass_context
def retry(
    ctx: click.Context, domain: str, command_id: str, reason: str | None, operator: str | None
) -> None:
    """Re-queue a command with fresh attempts."""
    cid = parse_uuid(command_id, "command")
    who = operator or os_user()
    msg_id = run_with_bus(
        ctx,
        lambda bus: bus.troubleshooting.retry(
            domain, cid, reason=reason, operator=who, source="cli"
        ),
    )
    click.echo(f"re-queued {cid} as message {msg_id}")


@tsq.command()
@click.argument("domain")
@click.argument("command_id")
@click.option("--reason", help="Why (recorded in the event).")
@click.option("--operator", help="Who did it (recorded in the event; default: your OS user).")
@click.pass_context
def cancel(
    ctx: click.Context, domain: str, command_id: str, reason: str | None, operator: str | None
) -> None:
    """Cancel a command for good."""
    cid = parse_uuid(command_id, "command")
    who = operator or os_user()
    run_with_bus(
        ctx,
        lambda bus: bus.troubleshooting.cancel(
            domain, cid, reason=reason, operator=who, source="cli"
        ),
    )
    click.echo(f"cancelled {cid}")


@tsq.command()
@click.argument("domain")
@click.argument("command_id")
@click.option(
    "--result",
    "result_json",
    default="null",
    show_default=True,
    help="The command's result, as JSON, or @FILE (its contents), or - (standard input).",
)
@click.option("--reason", help="Why (recorded in the event).")
@click.option("--operator", help="Who did it (recorded in the event; default: your OS user).")
@click.pass_context
def complete(
    ctx: click.Context,
    domain: str,
    command_id: str,
    result_json: str,
    reason: str | None,
    operator: str | None,
) -> None:
    """Mark a command completed by hand."""
    cid = parse_uuid(command_id, "command")
    result = read_json(result_json, "--result")
    run_with_bus(
        ctx,
        lambda bus: bus.troubleshooting.complete(
            domain, cid, result=result, reason=reason, operator=operator or os_user(), source="cli"
        ),
    )
    click.echo(f"completed {cid}")
