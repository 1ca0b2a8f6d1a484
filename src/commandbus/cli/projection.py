"""``commandbus projection``: prove the status tables equal a replay, or rebuild them."""

from __future__ import annotations

import click

from commandbus.cli._common import CLIError, run_with_bus


@click.group()
def projection() -> None:
    """Check or rebuild the command status projection from the event stream."""


@projection.command()
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=50,
    show_default=True,
    help="Differences to print (all are counted).",
)
@click.pass_context
def verify(ctx: click.Context, limit: int) -> None:
    """Replay every event and compare with the live table; exit 1 on any difference."""
    report = run_with_bus(ctx, lambda bus: bus.verify_projection())
    for diff in report.differences[:limit]:
        click.echo(str(diff))
    if not report.ok:
        raise CLIError(f"{len(report.differences)} difference(s) in {report.checked} commands")
    click.echo(f"{report.checked} commands: the projection equals a replay of the events")


@projection.command()
@click.option(
    "--replace",
    is_flag=True,
    help="Replace the live table (locks it) instead of writing command_rebuild.",
)
@click.pass_context
def rebuild(ctx: click.Context, replace: bool) -> None:
    """Recompute the projection from the events alone."""
    n = run_with_bus(ctx, lambda bus: bus.rebuild_projection(replace_live=replace))
    where = "commandbus.command" if replace else "commandbus.command_rebuild"
    click.echo(f"rebuilt {n} commands into {where}")
