"""``commandbus show``: where is command X, how far along is batch Y."""

from __future__ import annotations

import asyncio
import json
from uuid import UUID

import click

from commandbus.cli._common import CLIError, database_url, load_config
from commandbus.engine.bus import CommandBus
from commandbus.engine.codec import unstructure


def _uuid(value: str, what: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise CLIError(f"not a {what} id: {value!r}") from None


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
    cid = _uuid(command_id, "command")

    async def go(url: str) -> None:
        async with CommandBus(url, config=load_config(ctx), max_connections=1) as bus:
            record = await bus.get_command(domain, cid)
            if record is None:
                raise CLIError(f"no command {cid} in domain {domain!r}")
            events = await bus.command_history(domain, cid)
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
                f"  last error:   {record.last_error.get('code')}: "
                f"{record.last_error.get('message')}"
            )
        if record.result is not None:
            click.echo(f"  result:       {json.dumps(record.result)}")
        click.echo("  events:")
        for e in events:
            click.echo(f"    v{e.stream_version} {e.recorded_at.isoformat()} {e.event_type}")

    with database_url(ctx) as url:
        asyncio.run(go(url))


@show.command("batch")
@click.argument("batch_id")
@click.pass_context
def show_batch(ctx: click.Context, batch_id: str) -> None:
    """A batch's progress, counted by status."""
    bid = _uuid(batch_id, "batch")

    async def go(url: str) -> None:
        async with CommandBus(url, config=load_config(ctx), max_connections=1) as bus:
            batch = await bus.get_batch(bid)
        if batch is None:
            raise CLIError(f"no batch {bid}")
        click.echo(f"batch {batch.batch_id} {batch.name or ''}".rstrip())
        click.echo(f"  {batch.finished} of {batch.total} finished")
        for status, n in sorted(batch.counts.items()):
            click.echo(f"  {status}: {n}")

    with database_url(ctx) as url:
        asyncio.run(go(url))
