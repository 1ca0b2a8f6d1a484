"""``commandbus projection``: prove the status tables equal a replay, or rebuild them."""

from __future__ import annotations

import json
import sys

import click

from commandbus.cli._common import CLIError, run_with_bus
from commandbus.codec import unstructure
from commandbus.engine.commands.bus import CommandBus
from commandbus.engine.commands.replay import Difference, VerifyReport
from commandbus.sagas.client import SagaClient
from commandbus.sagas.replay import SagaDifference, SagaVerifyReport


@click.group()
def projection() -> None:
    """Check or rebuild the status tables (commands, batches, sagas) from the event stream."""


@projection.command()
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=50,
    show_default=True,
    help="Differences to print (all are counted).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="What was checked and each difference printed, as one JSON object.",
)
@click.pass_context
def verify(ctx: click.Context, limit: int, as_json: bool) -> None:
    """Replay every event and compare with the live tables; exit 1 on any difference."""

    async def check(bus: CommandBus) -> tuple[VerifyReport, SagaVerifyReport]:
        return await bus.verify_projection(), await SagaClient(bus).verify_projection()

    report, sagas = run_with_bus(ctx, check)
    differences: list[Difference | SagaDifference] = [*report.differences, *sagas.differences]
    if as_json:
        doc = {
            "ok": not differences,
            "checked": {
                "commands": report.checked,
                "batches": report.checked_batches,
                "sagas": sagas.checked,
            },
            "difference_count": len(differences),
            "differences": [{"text": _describe(d), **unstructure(d)} for d in differences[:limit]],
        }
        click.echo(json.dumps(doc, default=str))
        if differences:
            ctx.exit(1)
        return
    for diff in differences[:limit]:
        click.echo(_describe(diff))
    if differences:
        checked = [f"{report.checked} commands"]
        checked += [f"{report.checked_batches} batches"] if report.checked_batches else []
        checked += [f"{sagas.checked} sagas"] if sagas.checked else []
        where = " and ".join(
            [", ".join(checked[:-1]), checked[-1]] if len(checked) > 1 else checked
        )
        raise CLIError(f"{len(differences)} difference(s) in {where}")
    click.echo(f"{report.checked} commands: the projection equals a replay of the events")
    click.echo(f"{report.checked_batches} batches: the projection equals a replay of the events")
    click.echo(f"{sagas.checked} sagas: the projection equals a replay of the events")


_MISSING = object()


def _describe(diff: Difference | SagaDifference) -> str:
    """A difference on one line; of two JSON documents, only the keys that differ."""
    live, replayed = diff.live, diff.replayed
    if not isinstance(live, dict) or not isinstance(replayed, dict):
        return str(diff)
    where = str(diff).split(f" {diff.field}: ", 1)[0]
    keys = sorted(
        k
        for k in live.keys() | replayed.keys()
        if live.get(k, _MISSING) != replayed.get(k, _MISSING)
    )

    def shown(doc: dict[str, object], key: str) -> str:
        return repr(doc[key]) if key in doc else "<missing>"

    parts = [f"{k}: live={shown(live, k)} replayed={shown(replayed, k)}" for k in keys]
    return f"{where} {diff.field}: " + "; ".join(parts)


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
@click.option(
    "--yes",
    "-y",
    is_flag=True,
    help="Do not ask before --replace (needed when standard input is not a terminal).",
)
@click.pass_context
def rebuild(ctx: click.Context, replace: bool, table: str, yes: bool) -> None:
    """Recompute the status tables from the events alone.

    Batches go to commandbus.batch_rebuild and sagas to commandbus.saga_rebuild
    (with --replace: commandbus.batch and commandbus.saga, after a confirmation).
    """
    from commandbus.engine.commands.replay import rebuild_target

    rebuild_target(table)  # refused before connecting
    if replace and not yes:
        if not sys.stdin.isatty():
            raise CLIError(
                "--replace rewrites the live status tables: add --yes to confirm "
                "(standard input is not a terminal to ask on)"
            )
        click.confirm(
            "Replace the live tables commandbus.command, commandbus.batch and "
            "commandbus.saga with a replay of the events (writers wait meanwhile)?",
            abort=True,
        )

    async def go(bus: CommandBus) -> tuple[int, int]:
        commands = await bus.rebuild_projection(table=table, replace_live=replace)
        sagas = await SagaClient(bus).rebuild_projection(replace_live=replace)
        return commands, sagas

    n, n_sagas = run_with_bus(ctx, go)
    where, batches, sagas = (
        ("commandbus.command", "commandbus.batch", "commandbus.saga")
        if replace
        else (f"commandbus.{table}", "commandbus.batch_rebuild", "commandbus.saga_rebuild")
    )
    click.echo(f"rebuilt {n} commands into {where} and the batches into {batches}")
    click.echo(f"rebuilt {n_sagas} sagas into {sagas}")
