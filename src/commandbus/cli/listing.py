"""``commandbus list``: commands by domain, status, type or correlation id, a page at a time."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import click

from commandbus.cli._common import CLIError, page_options, parse_uuid, run_with_bus
from commandbus.cli.show import when
from commandbus.cli.timeline import error_text
from commandbus.codec import unstructure
from commandbus.engine.commands.read import MAX_PAGE, CommandFilter
from commandbus.models import CommandRecord, CommandStatus, Page

_STATUSES = [s.value for s in CommandStatus]
_COLUMNS = ("SENT", "DOMAIN", "TYPE", "STATUS", "ATTEMPTS", "COMMAND ID", "LAST ERROR")
#: The width the last error is cut to in the table.
_ERROR_WIDTH = 60


@click.command("list")
@click.option("--domain", help="Only commands of this domain.")
@click.option(
    "--status",
    metavar="STATUS",
    help=f"Only commands in this status (any case): {', '.join(_STATUSES)}.",
)
@click.option("--type", "command_type", help="Only commands of this type.")
@click.option("--correlation-id", metavar="UUID", help="Only commands with this correlation id.")
@click.option("--batch", "batch_id", metavar="UUID", help="Only the commands of this batch.")
@click.option("--error", help="Only commands whose last error contains this text (any case).")
@page_options(
    "Commands",
    MAX_PAGE,
    "Go on after a previous page: the cursor it printed (with the same order).",
)
@click.option(
    "--oldest-first",
    is_flag=True,
    help="Oldest first (default: newest first); ordered by the time sent, then the id.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def list_commands(
    ctx: click.Context,
    domain: str | None,
    status: str | None,
    command_type: str | None,
    correlation_id: str | None,
    batch_id: str | None,
    error: str | None,
    limit: int,
    cursor: str | None,
    oldest_first: bool,
    as_json: bool,
) -> None:
    """Commands matching every option given, newest first, one page at a time.

    When there is more, the last line on stderr says how to get the next page
    (--cursor ...). Every page is an index scan whatever the table's size: by
    correlation id or batch when given, else by domain and status.
    """
    if status is not None:
        if status.upper() not in _STATUSES:
            raise CLIError(f"--status must be one of {', '.join(_STATUSES)}, got {status!r}")
        status = status.upper()
    where = CommandFilter(
        domain=domain,
        status=status,
        command_type=command_type,
        correlation_id=None
        if correlation_id is None
        else parse_uuid(correlation_id, "correlation"),
        batch_id=None if batch_id is None else parse_uuid(batch_id, "batch"),
        error_contains=error,
    )
    page: Page = run_with_bus(
        ctx,
        lambda bus: bus.list_commands(
            where, limit=limit, cursor=cursor, newest_first=not oldest_first
        ),
    )
    if as_json:
        for record in page.items:
            click.echo(json.dumps(unstructure(record)))
    else:
        for line in table(page.items):
            click.echo(line)
        click.echo(f"{len(page.items)} command(s)", err=True)
    if page.next_cursor is not None:
        click.echo(f"more: --cursor {page.next_cursor}", err=True)


def clip(text: str, width: int = _ERROR_WIDTH) -> str:
    """``text`` cut to ``width`` characters, ending in ``...`` when cut."""
    return text if len(text) <= width else text[: width - 3] + "..."


def _row(r: CommandRecord) -> tuple[str, ...]:
    error = clip(error_text(r.last_error)) if r.last_error else ""
    return (
        when(r.created_at),
        r.domain,
        r.command_type,
        r.status.value,
        f"{r.attempts}/{r.max_attempts}",
        str(r.command_id),
        error,
    )


def aligned(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A header and rows as lines, each column as wide as its widest cell.

    Columns are two spaces apart; trailing blanks are dropped. A cell may be
    styled (``click.style``): its width is that of its visible text. No rows,
    no lines (not even the header).
    """
    body = [tuple(row) for row in rows]
    if not body:
        return []
    lines = [tuple(header), *body]
    widths = [max(len(click.unstyle(row[i])) for row in lines) for i in range(len(header))]
    return [
        "  ".join(
            cell + " " * (w - len(click.unstyle(cell))) for cell, w in zip(row, widths, strict=True)
        ).rstrip()
        for row in lines
    ]


def table(records: Sequence[CommandRecord]) -> list[str]:
    """Records as a table with a header, columns as wide as their widest cell."""
    return aligned(_COLUMNS, (_row(r) for r in records))
