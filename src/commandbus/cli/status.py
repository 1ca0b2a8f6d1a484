"""``commandbus status``: the whole system on one screen (or as one JSON object)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta

import click

from commandbus.cli._common import Duration, run_with_bus
from commandbus.codec import unstructure
from commandbus.models import CommandStatus
from commandbus.monitoring import ProcessStatus, SystemStatus, age_text, system_status
from commandbus.monitoring.read import DEFAULT_TIMEOUT, MAX_TIMEOUT
from commandbus.sagas.decide import SAGA_QUEUE

#: The command status columns, in the order of a command's life.
_COLUMNS = (
    ("PENDING", CommandStatus.PENDING),
    ("RETRYING", CommandStatus.RETRY_SCHEDULED),
    ("TSQ", CommandStatus.IN_TROUBLESHOOTING_QUEUE),
    ("COMPLETED", CommandStatus.COMPLETED),
    ("FAILED", CommandStatus.FAILED),
    ("CANCELLED", CommandStatus.CANCELLED),
)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="The snapshot as one JSON object.")
@click.option(
    "--timeout",
    type=Duration(),
    default=f"{DEFAULT_TIMEOUT.total_seconds():g}s",
    show_default=True,
    help="How long each query of the snapshot may take (e.g. 5s, 1m; up to 10m).",
)
@click.pass_context
def status(ctx: click.Context, as_json: bool, timeout: timedelta) -> None:
    """Domains (queue, in flight, commands by status, live workers), sagas, processes,
    and what needs a look: e.g. pending commands that no live worker serves."""
    if not timedelta(0) < timeout <= MAX_TIMEOUT:
        raise click.BadParameter("must be over 0 and at most 10m", param_hint="'--timeout'")
    snapshot = run_with_bus(ctx, lambda bus: system_status(bus, statement_timeout=timeout))
    if as_json:
        click.echo(json.dumps(unstructure(snapshot)))
        return
    for line in render(snapshot):
        click.echo(line)


def render(s: SystemStatus) -> Iterator[str]:
    """The snapshot as text lines, one screen."""
    yield f"commandbus status of database {s.database} at {s.taken_at:%Y-%m-%d %H:%M:%S %Z}"
    yield ""
    yield from _domains(s)
    yield ""
    yield from _sagas(s)
    yield ""
    yield from _processes(s)
    yield ""
    if s.attention:
        yield "ATTENTION"
        yield from (f"  ! {line}" for line in s.attention)
    else:
        yield "Nothing needs a look."


def _table(rows: list[list[str]], left: int = 1) -> Iterator[str]:
    """Rows as columns: the first ``left`` columns flush left, the others right."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        cells = [
            cell.ljust(w) if i < left else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(r, widths, strict=True))
        ]
        yield "  ".join(cells).rstrip()


def _domains(s: SystemStatus) -> Iterator[str]:
    if not s.domains:
        yield "No domains yet: nothing was sent and no worker has run."
        return
    head = ["DOMAIN", "READY", "OLDEST", "IN FLIGHT", "SCHEDULED"]
    rows = [head + [name for name, _ in _COLUMNS] + ["WORKERS"]]
    for d in s.domains:
        oldest = d.queue.oldest_ready_at
        workers = f"{d.live_workers} (x{d.concurrency})" if d.live_workers else "NONE"
        rows.append(
            [
                d.domain,
                str(d.queue.ready),
                "-" if oldest is None else age_text(s.age(oldest)),
                str(d.queue.in_flight),
                str(d.queue.scheduled),
                *(d.commands.text(st.value) for _, st in _COLUMNS),
                workers,
            ]
        )
    yield from _table(rows)


def _sagas(s: SystemStatus) -> Iterator[str]:
    summary = s.sagas
    counts = summary.sagas
    found = [f"{counts.text(st)} {st}" for st, n in counts.counts.items() if n]
    yield f"SAGAS  {', '.join(found) if found else 'none yet'}"
    queue = summary.queue
    if queue is not None:
        yield (
            f"  saga queue: {queue.ready} ready, {queue.in_flight} in flight, "
            f"{queue.scheduled} scheduled (timers, replies not due yet)"
        )
    yield f"  coordinators alive: {summary.live_coordinators or 'NONE'}"


def _processes(s: SystemStatus) -> Iterator[str]:
    if not s.processes:
        yield "PROCESSES  none seen in the last hour (no heartbeats)"
        return
    yield "PROCESSES"
    rows = [["  STATE", "KIND", "HOST:PID", "SERVES", "CONCURRENCY", "STARTED", "LAST SEEN"]]
    rows.extend(_process_row(s, p) for p in s.processes)
    yield from _table(rows, left=4)


def _process_row(s: SystemStatus, p: ProcessStatus) -> list[str]:
    serves = ", ".join("(sagas)" if q == SAGA_QUEUE else q for q in p.queues)
    if p.state == "stopped" and p.stopped_at is not None:
        seen = f"stopped {age_text(s.age(p.stopped_at))} ago"
    else:
        seen = f"{age_text(s.age(p.last_seen_at))} ago"
    return [
        f"  {p.state}",
        p.kind,
        f"{p.host}:{p.pid}",
        serves,
        str(p.concurrency),
        f"{age_text(s.age(p.started_at))} ago",
        seen,
    ]
