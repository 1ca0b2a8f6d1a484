"""``commandbus show``: where is command X, how far along is batch Y."""

from __future__ import annotations

import json

import click

from commandbus.cli._common import CLIError, parse_uuid, run_with_bus
from commandbus.codec import unstructure
from commandbus.engine.commands.bus import CommandBus
from commandbus.models import CommandRecord, StoredEvent


@click.group()
def show() -> None:
    """Look up a command (status and event history) or a batch (progress)."""


@show.command("command")
@click.argument("domain")
@click.argument("command_id")
@click.option("--json", "as_json", is_flag=True, help="The record and its events as JSON.")
@click.pass_context
def show_command(ctx: click.Context, domain: str, command_id: str, as_json: bool) -> None:
    """A command's status row and every event of its stream."""
    cid = parse_uuid(command_id, "command")

    async def look(bus: CommandBus) -> tuple[CommandRecord | None, list[StoredEvent]]:
        return await bus.get_command(domain, cid), await bus.command_history(domain, cid)

    record, events = run_with_bus(ctx, look)
    if record is None:
        raise CLIError(f"no command {cid} in domain {domain!r}")
    if as_json:
        click.echo(json.dumps({"command": unstructure(record), "events": unstructure(events)}))
        return
    click.echo(f"{record.domain}/{record.command_type} {record.command_id}")
    click.echo(
        f"  status:       {record.status.value} (attempts {record.attempts}"
        f" of {record.max_attempts})"
    )
    click.echo(f"  correlation:  {record.correlation_id}")
    if record.batch_id or record.saga_id:
        click.echo(f"  batch / saga: {record.batch_id or '-'} / {record.saga_id or '-'}")
    if record.last_error:
        click.echo(
            f"  last error:   {record.last_error.get('code')}: {record.last_error.get('message')}"
        )
    if record.result is not None:
        click.echo(f"  result:       {json.dumps(record.result)}")
    click.echo("  events:")
    for e in events:
        click.echo(f"    v{e.stream_version} {e.recorded_at.isoformat()} {e.event_type}")


@show.command("batch")
@click.argument("batch_id")
@click.pass_context
def show_batch(ctx: click.Context, batch_id: str) -> None:
    """A batch's progress, counted by status."""
    bid = parse_uuid(batch_id, "batch")
    batch = run_with_bus(ctx, lambda bus: bus.get_batch(bid))
    if batch is None:
        raise CLIError(f"no batch {bid}")
    click.echo(f"batch {batch.batch_id} {batch.name or ''}".rstrip())
    click.echo(f"  {batch.finished} of {batch.total} finished")
    for status, n in sorted(batch.counts.items()):
        click.echo(f"  {status}: {n}")
