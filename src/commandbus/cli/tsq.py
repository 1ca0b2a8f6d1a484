"""``commandbus tsq``: the troubleshooting queue for operators."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TypeVar
from uuid import UUID

import click

from commandbus.cli._common import os_user, page_options, read_json, run_with_bus
from commandbus.cli.listing import table
from commandbus.cli.show import command_args, find_command
from commandbus.codec import unstructure
from commandbus.engine.commands.bus import CommandBus
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


def _command_args(f: Callable[..., T]) -> Callable[..., T]:
    """``[DOMAIN] ID``, as ``commandbus cancel`` and ``show command`` take them."""
    f = click.argument("command_id", metavar="ID", required=False)(f)
    return click.argument("domain_or_id", metavar="[DOMAIN]")(f)


async def _domain(bus: CommandBus, domain: str | None, cid: UUID) -> str:
    """The command's domain: as given, else the one domain that has that id."""
    return domain if domain is not None else (await find_command(bus, None, cid)).domain


@tsq.command()
@_command_args
@click.option("--reason", help="Why (recorded in the event).")
@click.option("--operator", help="Who did it (recorded in the event; default: your OS user).")
@click.pass_context
def retry(
    ctx: click.Context,
    domain_or_id: str,
    command_id: str | None,
    reason: str | None,
    operator: str | None,
) -> None:
    """Re-queue a command with fresh attempts.

    The domain may be left out when no other domain has that id.
    """
    domain, cid = command_args(domain_or_id, command_id)
    who = operator or os_user()

    async def go(bus: CommandBus) -> int:
        d = await _domain(bus, domain, cid)
        return await bus.troubleshooting.retry(d, cid, reason=reason, operator=who, source="cli")

    msg_id = run_with_bus(ctx, go)
    click.echo(f"re-queued {cid} as message {msg_id}")


@tsq.command()
@_command_args
@click.option("--reason", help="Why (recorded in the event).")
@click.option("--operator", help="Who did it (recorded in the event; default: your OS user).")
@click.pass_context
def cancel(
    ctx: click.Context,
    domain_or_id: str,
    command_id: str | None,
    reason: str | None,
    operator: str | None,
) -> None:
    """Cancel a command for good.

    The domain may be left out when no other domain has that id.
    """
    domain, cid = command_args(domain_or_id, command_id)
    who = operator or os_user()

    async def go(bus: CommandBus) -> None:
        d = await _domain(bus, domain, cid)
        await bus.troubleshooting.cancel(d, cid, reason=reason, operator=who, source="cli")

    run_with_bus(ctx, go)
    click.echo(f"cancelled {cid}")


@tsq.command()
@_command_args
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
    domain_or_id: str,
    command_id: str | None,
    result_json: str,
    reason: str | None,
    operator: str | None,
) -> None:
    """Mark a command completed by hand.

    The domain may be left out when no other domain has that id.
    """
    domain, cid = command_args(domain_or_id, command_id)
    result = read_json(result_json, "--result")
    who = operator or os_user()

    async def go(bus: CommandBus) -> None:
        d = await _domain(bus, domain, cid)
        await bus.troubleshooting.complete(
            d, cid, result=result, reason=reason, operator=who, source="cli"
        )

    run_with_bus(ctx, go)
    click.echo(f"completed {cid}")
