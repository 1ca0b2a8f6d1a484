"""Dashboards' reads beyond the snapshot: bounded read transactions, outcomes per
minute (:func:`throughput`) and what an id names (:func:`find_id`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Final, Literal
from uuid import UUID

import attrs
from psycopg import sql

from commandbus import event_types as ev
from commandbus.arguments import bool_arg, int_arg, show, uuid_arg
from commandbus.engine.commands.bus import CommandBus
from commandbus.engine.commands.read import CommandFilter
from commandbus.engine.db.connect import Conn, borrow, translated
from commandbus.errors import ValidationError
from commandbus.monitoring import sql as q
from commandbus.sagas.client import SagaClient
from commandbus.sagas.read import SagaFilter

#: The longest window :func:`throughput` reads, in minutes (a day).
MAX_MINUTES: Final = 24 * 60
#: Outcome events that count as completed, and as failed, per minute.
COMPLETED_EVENTS: Final = (ev.COMMAND_COMPLETED, ev.COMMAND_COMPLETED_BY_OPERATOR)
FAILED_EVENTS: Final = (ev.COMMAND_FAILED, ev.COMMAND_MOVED_TO_TSQ)


def _timeout_ms(value: object) -> int:
    if not isinstance(value, timedelta) or not timedelta(0) < value <= timedelta(minutes=10):
        raise ValidationError(
            "statement_timeout must be a timedelta over 0 and at most 10 minutes, "
            f"got {show(value)}"
        )
    return max(1, int(value.total_seconds() * 1000))


@asynccontextmanager
async def bounded(
    bus: CommandBus,
    *,
    statement_timeout: timedelta = timedelta(seconds=5),
    read_only: bool = True,
) -> AsyncIterator[Conn]:
    """A pooled connection in a transaction whose every statement gives up after
    ``statement_timeout`` (read-only unless ``read_only=False``); committed when
    the block ends, rolled back on an error. Pass it as ``conn=`` to the bus's and
    the saga client's reads (and, with ``read_only=False``, operator actions).

    Waiting for a pooled connection is bounded too (by ``statement_timeout``): a
    database that went away is a :class:`~commandbus.errors.DatabaseUnavailableError`
    then, not a wait of the pool's 30 seconds."""
    if not isinstance(bus, CommandBus):
        raise ValidationError(f"bus must be a CommandBus, got {show(bus)}")
    timeout_ms = _timeout_ms(statement_timeout)
    read_only = bool_arg(read_only, "read_only")
    with translated("database unavailable"):
        async with bus.pool.connection(timeout=timeout_ms / 1000) as conn, conn.transaction():
            if read_only:
                await conn.execute(q.READ_ONLY_TRANSACTION)
            await conn.execute(q.BOUNDED_TRANSACTION, {"timeout_ms": timeout_ms})
            yield conn


@attrs.frozen(kw_only=True)
class MinuteCounts:
    """Outcomes recorded in one minute (``minute``: its start, on the server's clock)."""

    minute: datetime
    completed: int
    failed: int


@attrs.frozen(kw_only=True)
class Throughput:
    """Commands completed and failed per minute, oldest minute first.

    Completed: ``CommandCompleted`` and completed by an operator; failed: a broken
    business rule or a move to the troubleshooting queue.
    """

    minutes: tuple[MinuteCounts, ...]


async def throughput(
    bus: CommandBus,
    *,
    minutes: int = 30,
    conn: Conn | None = None,
) -> Throughput:
    """Commands completed and failed per minute over the last ``minutes`` (the
    current minute last), counted from the partial index of outcome events (the
    rest of the event log is never read)."""
    if not isinstance(bus, CommandBus):
        raise ValidationError(f"bus must be a CommandBus, got {show(bus)}")
    minutes = int_arg(minutes, "minutes", low=1, high=MAX_MINUTES)
    async with borrow(bus.pool, conn) as c:
        cur = await c.execute(
            _throughput_statement(),
            {
                "minutes": minutes,
                "completed": list(COMPLETED_EVENTS),
                "failed": list(FAILED_EVENTS),
            },
        )
        rows = await cur.fetchall()
    return Throughput(
        minutes=tuple(MinuteCounts(minute=m, completed=int(c_), failed=int(f)) for m, c_, f in rows)
    )


@lru_cache(maxsize=1)
def _throughput_statement() -> sql.Composed:
    outcomes = sql.SQL(", ").join(sql.Literal(t) for t in (*COMPLETED_EVENTS, *FAILED_EVENTS))
    return sql.SQL(q.THROUGHPUT).format(outcomes=outcomes)


Kind = Literal["saga", "command", "batch", "correlation"]


@attrs.frozen(kw_only=True)
class IdMatch:
    """Something an id names: a saga, a command (in ``domain``), a batch, or the
    correlation id of a flow (commands or sagas share it)."""

    kind: Kind
    id: UUID
    domain: str | None = None


async def find_id(
    bus: CommandBus, any_id: UUID | str, *, conn: Conn | None = None
) -> list[IdMatch]:
    """Everything ``any_id`` names, in this order: a saga, commands (one per domain
    holding that id), a batch, a correlation id. Each is a primary-key or index
    probe ([] when it names nothing)."""
    if not isinstance(bus, CommandBus):
        raise ValidationError(f"bus must be a CommandBus, got {show(bus)}")
    uid = uuid_arg(any_id, "id")
    sagas = SagaClient(bus)
    found: list[IdMatch] = []
    async with borrow(bus.pool, conn) as c:
        if await sagas.get_saga(uid, conn=c) is not None:
            found.append(IdMatch(kind="saga", id=uid))
        found.extend(
            IdMatch(kind="command", id=uid, domain=r.domain)
            for r in await bus.find_commands(uid, conn=c)
        )
        if await bus.get_batch(uid, conn=c) is not None:
            found.append(IdMatch(kind="batch", id=uid))
        flow = await bus.list_commands(CommandFilter(correlation_id=uid), limit=1, conn=c)
        if not flow.items:
            flow_sagas = await sagas.list_sagas(SagaFilter(correlation_id=uid), limit=1, conn=c)
            if flow_sagas.items:
                found.append(IdMatch(kind="correlation", id=uid))
        else:
            found.append(IdMatch(kind="correlation", id=uid))
    return found
