"""``commandbus saga``: find sagas, read one's timeline, cancel, pause or resume one,
or count a failed compensation as done by hand."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import click

from commandbus.cli._common import (
    CLIError,
    Duration,
    Number,
    os_user,
    page_options,
    parse_uuid,
    run_with_bus,
)
from commandbus.cli.listing import aligned, clip
from commandbus.cli.timeline import (
    SagaView,
    duration,
    error_text,
    load_view,
    render,
    status_text,
)
from commandbus.codec import unstructure
from commandbus.engine.commands.bus import CommandBus
from commandbus.sagas.client import SagaClient
from commandbus.sagas.read import MAX_PAGE, SagaFilter, SagaPage, SagaRecord
from commandbus.sagas.state import SagaStatus

MAX_INT = 2**31 - 1
_COLUMNS = ("SAGA", "DEFINITION", "STATUS", "CURRENT STEPS", "TIMING", "LAST ERROR")


@click.group()
def saga() -> None:
    """List sagas, show one's timeline, and cancel, pause or resume one (or settle a
    failed compensation by hand)."""


@saga.command("list")
@click.option(
    "--status",
    metavar="STATUS",
    help=f"Only sagas in this status: {', '.join(s.value for s in SagaStatus)}.",
)
@click.option("--name", help="Only sagas of this definition.")
@click.option(
    "--version",
    "version",
    type=Number(1, MAX_INT, integer=True),
    help="Only sagas started with this definition version.",
)
@click.option(
    "--correlation-id",
    "--correlation",
    "correlation",
    help="Only sagas with this correlation id (as 'commandbus list --correlation-id').",
)
@click.option(
    "--stuck-for",
    type=Duration(),
    help="Only sagas not ended that have not moved for this long (e.g. 5m, 1h30m, 2d).",
)
@page_options("Sagas", MAX_PAGE)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def list_(
    ctx: click.Context,
    status: str | None,
    name: str | None,
    version: int | None,
    correlation: str | None,
    stuck_for: timedelta | None,
    limit: int,
    cursor: str | None,
    as_json: bool,
) -> None:
    """Sagas matching every option given, oldest first."""
    where = SagaFilter(
        status=status,
        name=name,
        version=version,
        correlation_id=None if correlation is None else parse_uuid(correlation, "correlation"),
        stuck_for=stuck_for,
    )

    async def look(bus: CommandBus) -> tuple[SagaPage, datetime]:
        page = await SagaClient(bus).list_sagas(where, limit=limit, cursor=cursor)
        async with bus.pool.connection() as conn:
            cur = await conn.execute("SELECT now()")
            row = await cur.fetchone()
        assert row is not None
        return page, row[0]

    page, now = run_with_bus(ctx, look)
    if as_json:
        for rec in page.items:
            doc = unstructure(rec)
            doc.pop("state", None)  # `saga show --json` has it
            click.echo(json.dumps(doc))
    else:
        for line in aligned(_COLUMNS, (_row(rec, now) for rec in page.items)):
            click.echo(line)
        click.echo(f"{len(page.items)} saga(s)", err=True)
    if page.next_cursor is not None:
        click.echo(f"more: --cursor {page.next_cursor}", err=True)


def _row(rec: SagaRecord, now: datetime) -> tuple[str, ...]:
    if rec.ended_at is not None:
        moved = f"ended after {duration((rec.ended_at - rec.created_at).total_seconds())}"
    else:
        moved = f"idle {duration((now - rec.updated_at).total_seconds())}"
    return (
        str(rec.saga_id),
        f"{rec.name} v{rec.definition_version}",
        status_text(rec.status.value),
        ",".join(rec.current_steps) or "-",
        moved,
        clip(error_text(rec.last_error)) if rec.last_error else "",
    )


@saga.command("show")
@click.argument("saga_id")
@click.option("--json", "as_json", is_flag=True, help="The saga, its events and commands as JSON.")
@click.pass_context
def show(ctx: click.Context, saga_id: str, as_json: bool) -> None:
    """A saga's status, steps, last error and timeline.

    The timeline has one line per event with its offset from the start: each
    step's command sent, retries and operators' actions on it, its outcome and
    how long it took, timeouts, compensations and the end.
    """
    sid = parse_uuid(saga_id, "saga")

    async def look(bus: CommandBus) -> SagaView | None:
        return await load_view(bus, sid)

    view = run_with_bus(ctx, look)
    if view is None:
        raise CLIError(f"no saga {sid}")
    if as_json:
        click.echo(json.dumps(view.to_json()))
        return
    for line in render(view):
        click.echo(line)


def _request(
    ctx: click.Context,
    saga_id: str,
    action: Callable[[SagaClient, Any], Awaitable[None]],
) -> Any:
    sid = parse_uuid(saga_id, "saga")

    async def go(bus: CommandBus) -> None:
        await action(SagaClient(bus), sid)

    run_with_bus(ctx, go)
    return sid


_CARRIED_OUT = "(a running coordinator carries it out)"


@saga.command()
@click.argument("saga_id")
@click.option("--reason", help="Why (recorded in the saga's events).")
@click.option("--operator", help="Who asks (recorded in the saga's events; default: your OS user).")
@click.pass_context
def cancel(ctx: click.Context, saga_id: str, reason: str | None, operator: str | None) -> None:
    """Compensate a running saga: its completed steps are undone in reverse.

    Refused once the saga has ended or passed its pivot. A step's command waiting
    in the troubleshooting queue is cancelled at once.
    """
    sid = _request(
        ctx,
        saga_id,
        lambda c, s: c.cancel_saga(s, reason=reason, operator=operator or os_user(), source="cli"),
    )
    click.echo(f"cancel of saga {sid} requested {_CARRIED_OUT}")


@saga.command()
@click.argument("saga_id")
@click.option("--reason", help="Why (recorded in the saga's events).")
@click.option("--operator", help="Who asks (recorded in the saga's events; default: your OS user).")
@click.pass_context
def pause(ctx: click.Context, saga_id: str, reason: str | None, operator: str | None) -> None:
    """Hold a saga: outcomes are still recorded, nothing new is sent until resumed."""
    sid = _request(
        ctx,
        saga_id,
        lambda c, s: c.pause_saga(s, reason=reason, operator=operator or os_user(), source="cli"),
    )
    click.echo(f"pause of saga {sid} requested {_CARRIED_OUT}")


@saga.command()
@click.argument("saga_id")
@click.option("--operator", help="Who asks (recorded in the saga's events; default: your OS user).")
@click.pass_context
def resume(ctx: click.Context, saga_id: str, operator: str | None) -> None:
    """Let a paused saga go on (what it held back is sent)."""
    sid = _request(
        ctx, saga_id, lambda c, s: c.resume_saga(s, operator=operator or os_user(), source="cli")
    )
    click.echo(f"resume of saga {sid} requested {_CARRIED_OUT}")


@saga.command("mark-compensated")
@click.argument("saga_id")
@click.argument("step")
@click.option("--reason", help="What was done by hand (recorded in the saga's events).")
@click.option(
    "--operator", help="Who did it (recorded in the saga's events; default: your OS user)."
)
@click.pass_context
def mark_compensated(
    ctx: click.Context, saga_id: str, step: str, reason: str | None, operator: str | None
) -> None:
    """Count STEP's failed compensation as done by hand, so the saga goes on
    compensating the steps before it.

    For a COMPENSATION_FAILED saga whose compensation failed a business rule, was
    cancelled before it ran, or could not be built. If the compensation's command
    is in the troubleshooting queue it is cancelled there instead, which does the same.
    """
    sid = _request(
        ctx,
        saga_id,
        lambda c, s: c.mark_compensated(
            s, step, reason=reason, operator=operator or os_user(), source="cli"
        ),
    )
    click.echo(f"step {step} of saga {sid} marked compensated {_CARRIED_OUT}")
