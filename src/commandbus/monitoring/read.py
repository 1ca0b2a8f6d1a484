"""Reading the status snapshot: one REPEATABLE READ transaction, a few bounded queries."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Final

import attrs
import psycopg
from psycopg import sql

from commandbus.arguments import int_arg, show
from commandbus.engine.commands.bus import CommandBus
from commandbus.engine.db.connect import Conn, borrow, translated
from commandbus.engine.queues.heartbeat import STALE_BEATS
from commandbus.engine.queues.tables import queue_table
from commandbus.errors import DatabaseError, ValidationError
from commandbus.models import CommandStatus
from commandbus.monitoring import sql as q
from commandbus.monitoring.attention import attention
from commandbus.monitoring.models import (
    ConsumerStatus,
    DomainStatus,
    ProcessStatus,
    QueueDepth,
    SagaSummary,
    State,
    StatusCounts,
    SystemStatus,
)
from commandbus.sagas.decide import SAGA_QUEUE
from commandbus.sagas.state import SagaStatus

#: How long stopped and gone processes stay in the snapshot.
GONE_WINDOW: Final = timedelta(hours=1)
#: The longest each statement of a snapshot may take, and the default.
MAX_TIMEOUT: Final = timedelta(minutes=10)
DEFAULT_TIMEOUT: Final = timedelta(seconds=5)
#: Status counts stop here unless told otherwise.
DEFAULT_COUNT_LIMIT: Final = 100_000


async def system_status(
    bus: CommandBus,
    *,
    statement_timeout: timedelta = DEFAULT_TIMEOUT,
    count_limit: int = DEFAULT_COUNT_LIMIT,
) -> SystemStatus:
    """The whole system at one moment, as ``commandbus status`` shows it.

    Per domain: its queue (ready, oldest ready, in flight, scheduled), its
    commands by status and the live workers serving it; sagas by status and the
    coordinators alive; the worker and coordinator processes (from their
    heartbeats); and ``attention``: what needs a look, such as pending commands
    of a domain no live worker serves. Read in one read-only REPEATABLE READ
    transaction, so every figure is of the same moment. It never scans the event
    table: status counts stop at ``count_limit`` each, and every statement gives
    up after ``statement_timeout`` (a :class:`~commandbus.errors.DatabaseError` saying so).
    """
    if not isinstance(bus, CommandBus):
        raise ValidationError(f"bus must be a CommandBus, got {show(bus)}")
    timeout = statement_timeout
    if not isinstance(timeout, timedelta) or not timedelta(0) < timeout <= MAX_TIMEOUT:
        raise ValidationError(
            "statement_timeout must be a timedelta over 0 and at most 10 minutes, "
            f"got {show(timeout)}"
        )
    limit = int_arg(count_limit, "count_limit", low=1, high=2**62)
    timeout_ms = max(1, int(timeout.total_seconds() * 1000))
    async with borrow(bus.pool, None) as conn:
        try:
            with translated("reading the system status", other=DatabaseError):
                async with conn.transaction():
                    await conn.execute(q.SNAPSHOT_TRANSACTION)
                    return await _read(conn, timeout_ms=timeout_ms, limit=limit)
        except DatabaseError as exc:
            if isinstance(exc.__cause__, psycopg.errors.QueryCanceled):
                raise DatabaseError(
                    f"reading the system status took longer than {timeout.total_seconds():g}s "
                    "(a statement timeout); try again with a longer timeout",
                    details=exc.details,
                ) from exc.__cause__
            raise


async def _read(conn: Conn, *, timeout_ms: int, limit: int) -> SystemStatus:
    _set, taken_at, database = await _one(conn, q.BEGIN_SNAPSHOT, {"timeout_ms": timeout_ms})
    queues = [str(r[0]) for r in await _all(conn, q.QUEUES)]
    depths = await _depths(conn, queues)
    domains = [name for name in queues if name != SAGA_QUEUE]
    command_rows = await _all(
        conn,
        q.COMMAND_COUNTS,
        {"domains": domains, "statuses": [s.value for s in CommandStatus], "limit": limit + 1},
    )
    saga_rows = await _all(
        conn, q.SAGA_COUNTS, {"statuses": [s.value for s in SagaStatus], "limit": limit + 1}
    )
    beats = await _all(
        conn, q.HEARTBEATS, {"beats": STALE_BEATS, "window": GONE_WINDOW.total_seconds()}
    )
    consumers = [_consumer(r) for r in beats]
    processes = _processes(consumers, beats)
    by_domain: dict[str, dict[str, int]] = defaultdict(dict)
    for domain, status, n in command_rows:
        by_domain[domain][status] = int(n)
    live = [c for c in consumers if c.state == "live"]
    status = SystemStatus(
        taken_at=taken_at,
        database=database,
        domains=tuple(
            DomainStatus(
                domain=d,
                queue=depths[d],
                commands=_counts(by_domain[d], limit),
                live_workers=sum(1 for c in live if c.kind == "worker" and c.queue == d),
                concurrency=sum(c.concurrency for c in live if c.kind == "worker" and c.queue == d),
            )
            for d in domains
        ),
        sagas=SagaSummary(
            sagas=_counts({str(s): int(n) for s, n in saga_rows}, limit),
            queue=depths.get(SAGA_QUEUE),
            live_coordinators=sum(1 for c in live if c.kind == "coordinator"),
        ),
        processes=processes,
        attention=(),
        count_limit=limit,
    )
    return attrs.evolve(status, attention=tuple(attention(status)))


async def _depths(conn: Conn, queues: Sequence[str]) -> dict[str, QueueDepth]:
    """Every queue's depth, in ONE statement."""
    if not queues:
        return {}
    statement = sql.SQL(" UNION ALL ").join(
        sql.SQL(q.QUEUE_DEPTH).format(queue=queue_table(name), name=sql.Literal(name))
        for name in queues
    )
    return {
        str(name): QueueDepth(
            ready=int(ready),
            oldest_ready_at=oldest,
            in_flight=int(in_flight),
            scheduled=int(invisible) - int(in_flight),
        )
        for name, ready, oldest, in_flight, invisible in await _all(conn, statement)
    }


def _counts(found: dict[str, int], limit: int) -> StatusCounts:
    return StatusCounts(
        counts={s: min(n, limit) for s, n in found.items()},
        over_limit=tuple(s for s, n in found.items() if n > limit),
    )


def _consumer(row: Sequence[Any]) -> ConsumerStatus:
    (cid, _pid, _host, _os_pid, queue, concurrency, interval_ms, started, seen, stopped, live) = row
    state: State = "live" if live else "stopped" if stopped is not None else "gone"
    return ConsumerStatus(
        consumer_id=cid,
        kind="coordinator" if queue == SAGA_QUEUE else "worker",
        queue=queue,
        concurrency=int(concurrency),
        heartbeat_seconds=int(interval_ms) / 1000,
        started_at=started,
        last_seen_at=seen,
        stopped_at=stopped,
        state=state,
    )


def _processes(
    consumers: Sequence[ConsumerStatus], rows: Sequence[Sequence[Any]]
) -> tuple[ProcessStatus, ...]:
    """The consumers grouped by the process they run in (rows come ordered by it)."""
    groups: dict[Any, list[ConsumerStatus]] = {}
    where: dict[Any, tuple[str, int]] = {}
    for consumer, row in zip(consumers, rows, strict=True):
        groups.setdefault(row[1], []).append(consumer)
        where[row[1]] = (str(row[2]), int(row[3]))
    processes = []
    for process_id, members in groups.items():
        host, pid = where[process_id]
        kinds = sorted({c.kind for c in members}, reverse=True)  # worker before coordinator
        stops = [c.stopped_at for c in members]
        state: State = (
            "live"
            if any(c.state == "live" for c in members)
            else "stopped"
            if all(c.state == "stopped" for c in members)
            else "gone"
        )
        processes.append(
            ProcessStatus(
                process_id=process_id,
                host=host,
                pid=pid,
                kind="+".join(kinds),
                queues=tuple(sorted({c.queue for c in members})),
                concurrency=sum(c.concurrency for c in members),
                started_at=min(c.started_at for c in members),
                last_seen_at=max(c.last_seen_at for c in members),
                stopped_at=None if None in stops else max(s for s in stops if s is not None),
                state=state,
                consumers=tuple(members),
            )
        )
    order = {"live": 0, "gone": 1, "stopped": 2}
    return tuple(sorted(processes, key=lambda p: (order[p.state], p.host, p.pid)))


async def _one(conn: Conn, query: Any, params: Any = None) -> tuple[Any, ...]:
    cur = await conn.execute(query, params)
    row = await cur.fetchone()
    assert row is not None
    return tuple(row)


async def _all(conn: Conn, query: Any, params: Any = None) -> list[tuple[Any, ...]]:
    cur = await conn.execute(query, params)
    return [tuple(r) for r in await cur.fetchall()]
