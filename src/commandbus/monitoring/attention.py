"""What in a snapshot needs a look, one line each; and ages for people."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from commandbus.models import CommandStatus
from commandbus.monitoring.models import StatusCounts, SystemStatus
from commandbus.sagas.state import SagaStatus

#: Commands waiting for a worker: sent, or retried after their backoff.
WAITING: tuple[str, ...] = (CommandStatus.PENDING.value, CommandStatus.RETRY_SCHEDULED.value)
#: Sagas that need a coordinator to move on.
MOVING: tuple[str, ...] = (SagaStatus.RUNNING.value, SagaStatus.COMPENSATING.value)
#: Sagas that wait for an operator.
STUCK: tuple[str, ...] = (
    SagaStatus.WAITING_ON_OPERATOR.value,
    SagaStatus.COMPENSATION_FAILED.value,
)


def age_text(age: timedelta) -> str:
    """``850ms``, ``45s``, ``5m``, ``5m30s``, ``2h05m``, ``3d04h``: short, for people."""
    seconds = age.total_seconds()
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m" + (f"{s % 60:02d}s" if s % 60 else "")
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _total(counts: StatusCounts, statuses: tuple[str, ...]) -> str:
    n = sum(counts.counts.get(s, 0) for s in statuses)
    return f"{n}+" if any(s in counts.over_limit for s in statuses) else str(n)


def attention(status: SystemStatus) -> Iterator[str]:
    """Lines for what needs a look: commands no live worker will run, the troubleshooting
    queue, sagas with no coordinator or waiting for an operator, processes gone silent."""
    for d in status.domains:
        waiting = _total(d.commands, WAITING)
        if waiting != "0" and d.live_workers == 0:
            oldest = d.queue.oldest_ready_at
            since = "" if oldest is None else f", oldest {age_text(status.age(oldest))}"
            yield f"domain {d.domain}: {waiting} pending{since}, NO live worker"
        if d.troubleshooting:
            tsq = d.commands.text(CommandStatus.IN_TROUBLESHOOTING_QUEUE.value)
            yield (
                f"domain {d.domain}: {tsq} in the troubleshooting queue "
                f"(commandbus tsq list --domain {d.domain})"
            )
    sagas = status.sagas
    moving = _total(sagas.sagas, MOVING)
    queued = sagas.queue is not None and sagas.queue.ready > 0
    if (moving != "0" or queued) and sagas.live_coordinators == 0:
        yield f"sagas: {moving} running or compensating, NO live coordinator"
    for s in STUCK:
        if sagas.sagas.counts.get(s, 0):
            yield f"sagas: {sagas.sagas.text(s)} {s} (commandbus saga list --status {s})"
    for p in status.processes:
        if p.state == "gone":
            yield (
                f"{p.kind} {p.host}:{p.pid} ({', '.join(p.queues)}) gone: last seen "
                f"{age_text(status.age(p.last_seen_at))} ago and never stopped"
            )
