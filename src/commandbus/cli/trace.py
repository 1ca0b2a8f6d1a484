"""``commandbus trace``: a flow drawn as a waterfall from the audit stream alone."""

from __future__ import annotations

import json
import os
import sys

import click

from commandbus.cli._common import CLIError, parse_uuid, run_with_bus
from commandbus.engine.commands.bus import CommandBus
from commandbus.engine.observability.waterfall import (
    build_waterfall,
    load_flow,
    render_waterfall,
)
from commandbus.models import StoredEvent


def _color_default() -> bool:
    """Colour when stdout is a terminal and ``NO_COLOR`` is not set."""
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


@click.command()
@click.argument("flow_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="The waterfall's rows as JSON.")
@click.option(
    "--color/--no-color",
    default=None,
    help="Colour the bars and statuses (default: when stdout is a terminal and NO_COLOR is unset).",
)
@click.pass_context
def trace(ctx: click.Context, flow_id: str, as_json: bool, color: bool | None) -> None:
    """Draw the flow ID as a waterfall: ID is a correlation id or a saga id.

    Commands, their attempts (time waiting in the queue, then running), the
    commands their handlers sent, sagas with their steps and compensations, and
    batches, on one time axis, from the events alone: no tracing backend needed.
    The trace ids the events carry are in the header (to find the flow in Jaeger).
    """
    uid = parse_uuid(flow_id, "correlation or saga")

    async def load(bus: CommandBus) -> list[StoredEvent]:
        async with bus.pool.connection() as conn:
            return await load_flow(conn, uid)

    events = run_with_bus(ctx, load)
    if not events:
        raise CLIError(f"nothing recorded for {uid}: neither a correlation id nor a saga id")
    wf = build_waterfall(events)
    if as_json:
        click.echo(json.dumps(wf.to_json()))
        return
    use_color = _color_default() if color is None else color
    click.echo(render_waterfall(wf, color=use_color), nl=False, color=use_color)
