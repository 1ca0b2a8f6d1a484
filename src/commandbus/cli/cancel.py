"""``commandbus cancel``: an operator withdraws a command that has not run yet."""

from __future__ import annotations

import click

from commandbus.arguments import operator_arg, reason_arg
from commandbus.cli._common import os_user, run_with_bus
from commandbus.cli.show import command_args, find_command
from commandbus.engine.commands.bus import CommandBus
from commandbus.models import CommandRecord, CommandStatus


@click.command()
@click.argument("domain_or_id", metavar="[DOMAIN]")
@click.argument("command_id", metavar="ID", required=False)
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
    """Cancel a command waiting to run (PENDING, RETRY_SCHEDULED) or in the TSQ.

    Refused while a worker is running it (try again once that attempt has ended)
    and once it has ended. Its queue message is deleted in the same transaction, so
    no worker runs it afterwards; a saga's step answers CANCELLED and the saga
    compensates. The domain may be left out when no other domain has that id.
    """
    domain, cid = command_args(domain_or_id, command_id)
    # checked before the command is looked up: a bad argument is the first thing said
    reason, operator = reason_arg(reason), operator_arg(operator)

    async def go(bus: CommandBus) -> tuple[CommandRecord, CommandStatus]:
        record = await find_command(bus, domain, cid)
        was = await bus.cancel_command(
            record.domain, cid, reason=reason, operator=operator or os_user(), source="cli"
        )
        return record, was

    record, was = run_with_bus(ctx, go)
    click.echo(f"cancelled {record.domain}/{record.command_type} {cid} (was {was.value})")
