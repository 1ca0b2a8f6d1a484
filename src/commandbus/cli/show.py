"""``commandbus show``: where is command X, how far along is batch Y."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import click

from commandbus import event_types as ev
from commandbus.cli._common import CLIError, parse_uuid, run_with_bus
from commandbus.cli.timeline import duration, error_text
from commandbus.codec import unstructure
from commandbus.engine.commands.bus import CommandBus
from commandbus.models import BatchRecord, CommandRecord, CommandStatus, StoredEvent

#: The operators' events, and what each did.
_BY_OPERATOR = {
    ev.COMMAND_CANCELLED_BY_OPERATOR: "cancelled",
    ev.COMMAND_RETRIED_BY_OPERATOR: "retried",
    ev.COMMAND_COMPLETED_BY_OPERATOR: "completed",
}


@click.group()
def show() -> None:
    """Look up a command (status and event history) or a batch (progress)."""


def command_args(domain_or_id: str, command_id: str | None) -> tuple[str | None, UUID]:
    """``[DOMAIN] ID`` of a command on the command line: the domain may be left out."""
    if command_id is None:
        return None, parse_uuid(domain_or_id, "command")
    cid = parse_uuid(command_id, "command")
    if _is_uuid(domain_or_id):
        raise CLIError(
            f"expected [DOMAIN] ID, got two ids ({domain_or_id} {command_id}): give one "
            "command id, or its domain and the id"
        )
    return domain_or_id, cid


def _is_uuid(text: str) -> bool:
    try:
        UUID(text)
    except ValueError:
        return False
    return True


async def find_command(bus: CommandBus, domain: str | None, cid: UUID) -> CommandRecord:
    """The command ``cid`` of ``domain``; without a domain, the one command with that id.

    One-line errors when there is none, or several (same id in several domains).
    """
    if domain is not None:
        record = await bus.get_command(domain, cid)
        if record is None:
            raise CLIError(f"no command {cid} in domain {domain!r}")
        return record
    found = await bus.find_commands(cid)
    if not found:
        raise CLIError(f"no command {cid} in any domain")
    if len(found) > 1:
        domains = ", ".join(r.domain for r in found)
        raise CLIError(f"command id {cid} is in several domains ({domains}): give the domain too")
    return found[0]


@show.command("command")
@click.argument("domain_or_id", metavar="[DOMAIN]")
@click.argument("command_id", metavar="ID", required=False)
@click.option("--json", "as_json", is_flag=True, help="The record and its events as JSON.")
@click.pass_context
def show_command(
    ctx: click.Context, domain_or_id: str, command_id: str | None, as_json: bool
) -> None:
    """A command's status row and every event of its stream.

    The domain may be left out when no other domain has a command with that id.
    """
    domain, cid = command_args(domain_or_id, command_id)

    async def look(bus: CommandBus) -> tuple[CommandRecord, list[StoredEvent], datetime]:
        record = await find_command(bus, domain, cid)
        events = await bus.command_history(record.domain, cid)
        async with bus.pool.connection() as conn:
            cur = await conn.execute("SELECT now()")
            row = await cur.fetchone()
        assert row is not None
        return record, events, row[0]

    record, events, now = run_with_bus(ctx, look)
    if as_json:
        click.echo(json.dumps({"command": unstructure(record), "events": unstructure(events)}))
        return
    for line in describe_command(record, events, now):
        click.echo(line)


def when(at: datetime) -> str:
    """A moment in local time, to the millisecond, with its zone."""
    local = at.astimezone()
    return local.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + local.strftime(" %Z")


def _due(record: CommandRecord, events: list[StoredEvent]) -> datetime | None:
    """When a waiting command runs next: its retry, or its delayed first attempt."""
    last = events[-1] if events else None
    if last is None:
        return None
    if record.status is CommandStatus.RETRY_SCHEDULED:
        retry_at = last.data.get("retry_at")
        if last.event_type == ev.COMMAND_RETRY_SCHEDULED and isinstance(retry_at, str):
            try:
                return datetime.fromisoformat(retry_at)
            except ValueError:
                return None
    delay = last.data.get("delay_seconds")
    waiting = record.status is CommandStatus.PENDING and last.event_type == ev.COMMAND_SENT
    if waiting and isinstance(delay, int | float) and delay > 0:
        return last.recorded_at + timedelta(seconds=delay)
    return None


def _detail(e: StoredEvent) -> str:
    """What one event says beyond its type: attempt, error, operator, reason, result."""
    d: Mapping[str, Any] = e.data
    parts = []
    if isinstance(d.get("attempt"), int):
        parts.append(f"attempt {d['attempt']}")
    if d.get("error"):
        parts.append(error_text(d["error"]))
    if e.event_type == ev.COMMAND_RETRY_SCHEDULED and isinstance(d.get("retry_at"), str):
        parts.append(f"retry at {d['retry_at']}")
    if e.event_type == ev.COMMAND_MOVED_TO_TSQ and d.get("reason"):
        parts.append(f"why: {d['reason']}")
    if e.event_type in _BY_OPERATOR:
        parts.append(f"by {d.get('operator') or 'an operator'}")
        if d.get("reason"):
            parts.append(f"reason: {d['reason']}")
    return ("  " + "; ".join(parts)) if parts else ""


def describe_command(record: CommandRecord, events: list[StoredEvent], now: datetime) -> list[str]:
    """The text of ``show command``."""
    lines = [
        f"{record.domain}/{record.command_type} {record.command_id}",
        f"  status:       {record.status.value} (attempts {record.attempts}"
        f" of {record.max_attempts})",
    ]
    due = _due(record, events)
    if due is not None:
        wait = (due - now).total_seconds()
        left = f"in {duration(wait)}" if wait > 0 else "due now"
        label = "next retry" if record.status is CommandStatus.RETRY_SCHEDULED else "runs at"
        lines.append(f"  {label + ':':<14}{when(due)} ({left})")
    lines.append(f"  correlation:  {record.correlation_id}")
    if record.batch_id or record.saga_id:
        lines.append(f"  batch / saga: {record.batch_id or '-'} / {record.saga_id or '-'}")
    lines.append(f"  sent:         {when(record.created_at)}")
    lines.append(f"  updated:      {when(record.updated_at)}")
    by_operator = [e for e in events if e.event_type in _BY_OPERATOR]
    if by_operator:
        last = by_operator[-1]
        who = last.data.get("operator") or "-"
        lines.append(f"  operator:     {who} ({_BY_OPERATOR[last.event_type]} it)")
        if last.data.get("reason"):
            lines.append(f"  reason:       {last.data['reason']}")
    error = record.last_error
    if error:
        kind = f" ({error['type']})" if error.get("type") else ""
        lines.append(f"  last error:   {error_text(error)}{kind}")
        traceback = error.get("traceback")
        if isinstance(traceback, str) and traceback.strip():
            lines.append("  traceback:")
            lines += [f"    {line}" for line in traceback.rstrip().splitlines()]
    if record.result is not None:
        lines.append(f"  result:       {json.dumps(record.result)}")
    lines.append("  events:")
    for e in events:
        lines.append(f"    v{e.stream_version} {when(e.recorded_at)} {e.event_type}{_detail(e)}")
    return lines


def batch_json(batch: BatchRecord) -> dict[str, Any]:
    """``show batch --json``: the batch, its counts by status and its progress."""
    doc: dict[str, Any] = unstructure(batch)
    doc["finished"] = batch.finished
    doc["is_complete"] = batch.is_complete
    return doc


@show.command("batch")
@click.argument("batch_id")
@click.option("--json", "as_json", is_flag=True, help="The batch and its counts as JSON.")
@click.pass_context
def show_batch(ctx: click.Context, batch_id: str, as_json: bool) -> None:
    """A batch's progress, counted by status."""
    bid = parse_uuid(batch_id, "batch")
    batch = run_with_bus(ctx, lambda bus: bus.get_batch(bid))
    if batch is None:
        raise CLIError(f"no batch {bid}")
    if as_json:
        click.echo(json.dumps(batch_json(batch)))
        return
    click.echo(f"batch {batch.batch_id} {batch.name or ''}".rstrip())
    click.echo(f"  correlation:  {batch.correlation_id}")
    click.echo(f"  created:      {when(batch.created_at)}")
    click.echo(f"  {batch.finished} of {batch.total} finished")
    for status, n in sorted(batch.counts.items()):
        click.echo(f"  {status}: {n}")
