"""``commandbus projection``: prove the status tables equal a replay, or rebuild them."""

from __future__ import annotations

import click

from commandbus.cli._common import CLIError, run_with_bus


@click.group()
def projection() -> None:
    """Check or rebuild the status tables (commands, batches) from the event stream."""


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
    """Replay every event and compare with the live tables; exit 1 on any difference."""
    report = run_with_bus(ctx, lambda bus: bus.verify_projection())
    for diff in report.differences[:limit]:
        click.echo(str(diff))
    batches = f" and {report.checked_batches} batches" if report.checked_batches else ""
    if not report.ok:
        raise CLIError(
            f"{len(report.differences)} difference(s) in {report.checked} commands{batches}"
        )
    click.echo(f"{report.checked} commands: the projection equals a replay of the events")
    click.echo(f"{report.checked_batches} batches: the projection equals a replay of the events")


@projection.command()
@click.option(
    "--replace",
    is_flag=True,
    help="Replace the live tables (writers wait meanwhile) instead of writing rebuild tables.",
)
@click.option(
    "--table",
    default="command_rebuild",
    show_default=True,
    help="Table (in schema commandbus) for the commands; its name must end in _rebuild.",
)
@click.pass_context
def rebuild(ctx: click.Context, replace: bool, table: str) -> None:
    """Recompute the status tables from the events alone.

    Batches go to commandbus.batch_rebuild (with --replace: commandbus.batch).
    """
    from commandbus.engine.commands.replay import rebuild_target

    rebuild_target(table)  # refused before connecting
    n = run_with_bus(ctx, lambda bus: bus.rebuild_projection(table=table, replace_live=replace))
    where, batches = (
        ("commandbus.command", "commandbus.batch")
        if replace
        else (f"commandbus.{table}", "commandbus.batch_rebuild")
    )
    click.echo(f"rebuilt {n} commands into {where} and the batches into {batches}")
