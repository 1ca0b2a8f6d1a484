"""Writing saga transitions: each decided transition commits with everything it causes.

:func:`commit` is the one way a saga moves: in the caller's transaction it appends
each saga's events with its expected version, writes its status row, deletes the
queue messages it consumed, sets its timers and sends its commands (the next
steps or compensations). A saga whose stream moved on meanwhile (another
coordinator, an operator) writes nothing at all; it is decided again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any, cast
from uuid import UUID

import attrs
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool

from commandbus import event_types as ev
from commandbus.codec import dumps_document
from commandbus.engine.commands import store as command_store
from commandbus.engine.commands.troubleshooting import TroubleshootingQueue
from commandbus.engine.db.connect import Conn
from commandbus.engine.db.script import Script, run_all_applied
from commandbus.engine.eventstore.store import event_json
from commandbus.engine.queues.tables import queue_table
from commandbus.engine.worker.handoff import Claims
from commandbus.errors import CommandNotFoundError, ConcurrencyError, InvalidStateError
from commandbus.names import saga_stream_id
from commandbus.sagas import sql as queries
from commandbus.sagas.decide import SAGA_QUEUE, Decider
from commandbus.sagas.replay import replay_sagas
from commandbus.sagas.state import SagaState, columns, from_json

log = logging.getLogger("commandbus.coordinator")


@attrs.frozen
class Loaded:
    """A saga's state as stored, and the stream version it reflects."""

    state: SagaState
    version: int
    #: when the saga began (written only if its status row has to be written afresh)
    created_at: datetime | None = None
    #: set only when the status row was missing and the state was replayed
    ended_at: datetime | None = None


@attrs.define
class Pending:
    """A decided transition waiting to commit."""

    saga_id: UUID
    expected_version: int
    decider: Decider
    #: a row written afresh keeps the saga's first times (see :class:`Loaded`)
    created_at: datetime | None = None
    ended_at: datetime | None = None


class KeptStates:
    """The state and version a coordinator last committed for each running saga.

    A transition takes its saga's entry out (so a concurrent group never shares
    it: states are changed in place) and :meth:`keep` puts the new state back once
    its transaction has committed; anything else forgets it. A stale entry
    (another coordinator moved the saga) fails the expected-version check like any
    other race, and the saga is then loaded and decided again.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._states: dict[UUID, Loaded] = {}

    def get(self, saga_id: UUID) -> Loaded | None:
        return self._states.get(saga_id)

    def put(self, saga_id: UUID, loaded: Loaded) -> None:
        self._states[saga_id] = loaded
        while len(self._states) > self._size:  # the oldest first
            del self._states[next(iter(self._states))]

    def take(self, saga_ids: Iterable[UUID]) -> dict[UUID, Loaded]:
        """The kept states of these sagas, taken out."""
        states = self._states
        return {s: found for s in saga_ids if (found := states.pop(s, None)) is not None}

    def keep(self, pending: Sequence[Pending], passed: set[UUID]) -> None:
        """Keep the committed states of the running sagas a transaction moved."""
        for p in pending:
            state = p.decider.state
            moved = p.saga_id in passed and p.decider.events
            if moved and state is not None and not state.status.is_final:
                version = p.expected_version + len(p.decider.events)
                self.put(p.saga_id, Loaded(state, version, created_at=p.created_at))


async def load(conn: Conn, saga_ids: Sequence[UUID]) -> dict[UUID, Loaded]:
    """The stored state of these sagas (replayed from events where the row is missing)."""
    if not saga_ids:
        return {}
    cur = await conn.execute(queries.LOAD_STATES, {"ids": list(saga_ids)})
    found = {
        r[0]: Loaded(from_json(r[2]), int(r[1]), created_at=r[3]) for r in await cur.fetchall()
    }
    missing = [s for s in saga_ids if s not in found]
    if missing:
        for saga_id, row in (await replay_sagas(conn, missing)).items():
            found[saga_id] = Loaded(
                from_json(row["state"]),
                int(row["version"]),
                created_at=row["created_at"],
                ended_at=row["ended_at"],
            )
    return found


@lru_cache(maxsize=2)
def _transition_statement(all_applied: bool = False) -> bytes:
    """TRANSITION (or TRANSITION_ALL_APPLIED), rendered once (psycopg would render it
    per call)."""
    query = queries.TRANSITION_ALL_APPLIED if all_applied else queries.TRANSITION
    return sql.SQL(query).format(queue=queue_table(SAGA_QUEUE)).as_bytes()


async def _allocate_timers(conn: Conn, pending: Sequence[Pending]) -> None:
    timers = [(p, t) for p in pending for t in p.decider.timers]
    if not timers:
        return
    cur = await conn.execute(
        queries.ALLOCATE_MSG_IDS, {"table": f"pgmq.q_{SAGA_QUEUE}", "n": len(timers)}
    )
    ids = [int(r[0]) for r in await cur.fetchall()]
    for (p, t), msg_id in zip(timers, ids, strict=True):
        t.event_data["timer_msg_id"] = msg_id
        state = p.decider.state
        assert state is not None
        step = state.steps.get(t.step)
        if step is not None and step.command_id == t.command_id:
            step.timer_msg_id = msg_id


def _transition_params(pending: Sequence[Pending], **more: Any) -> dict[str, Any]:
    """The parameters of TRANSITION for these transitions (each with events)."""
    return {
        "transitions": dumps_document([_row(p) for p in pending], what="saga transition"),
        "saga_stream": ev.SAGA_STREAM,
        **more,
    }


def _row(p: Pending) -> dict[str, Any]:
    d = p.decider
    state = d.state
    assert state is not None
    return {
        **columns(state),
        "saga_id": str(p.saga_id),
        "correlation_id": str(state.correlation_id),
        "stream_id": saga_stream_id(p.saga_id),
        "expected": p.expected_version,
        "new_version": p.expected_version + len(d.events),
        "events": [event_json(e) for e in d.events],
        "ended": state.status.is_final,
        "created_at": None if p.created_at is None else p.created_at.isoformat(),
        "ended_at": None if p.ended_at is None else p.ended_at.isoformat(),
        "delete_ids": sorted(set(d.delete)),
        "timers": [
            {
                "msg_id": t.event_data["timer_msg_id"],
                "seconds": t.seconds,
                "message": {
                    "kind": "timer",
                    "saga_id": str(p.saga_id),
                    "step": t.step,
                    "command_id": str(t.command_id),
                    "seconds": t.seconds,
                },
                "headers": t.trace or None,
            }
            for t in d.timers
        ],
    }


async def commit(conn: Conn, pending: Sequence[Pending]) -> set[UUID]:
    """Record decided transitions in the caller's transaction; returns the sagas recorded.

    Two statements whatever the number of sagas (three with timers): the saga
    writes, then the commands of the sagas recorded. A saga is recorded only if
    its stream is still at the expected version; ``pending`` holds each saga once.
    """
    pending = [p for p in pending if p.decider.events or p.decider.delete]
    if not pending:
        return set()
    await _allocate_timers(conn, pending)
    moving = [p for p in pending if p.decider.events]
    passed: set[UUID] = set()
    if moving:
        cur = await conn.execute(_transition_statement(), _transition_params(moving))
        passed = {r[0] for r in await cur.fetchall()}
    # a transition with no event (a stale timer) only deletes its message
    quiet = [m for p in pending if not p.decider.events for m in p.decider.delete]
    if quiet:
        await delete_messages(conn, quiet)
    commands = [c for p in pending if p.saga_id in passed for c in p.decider.commands]
    if commands:
        sent = await command_store.send_commands(conn, commands)
        if any(msg_id is None for _d, _c, msg_id in sent):
            # the ids are derived from the saga's stream: only a second recording of
            # the same transition could repeat one, and the version check forbids it
            raise ConcurrencyError("a saga command was already sent; the transition is undone")
    for p in pending:
        if p.saga_id in passed:
            for domain, command_id in p.decider.withdraw:
                await _withdraw(conn, p.saga_id, domain, command_id)
    return passed


async def commit_all(conn: Conn, pending: Sequence[Pending]) -> None:
    """Record decided transitions, every one or none, in the caller's transaction.

    Raises :class:`ConcurrencyError` when any saga's stream moved meanwhile (a
    concurrent writer was first): the caller must then roll back. The saga writes
    and the commands go out without waiting for each other, so in a psycopg
    pipeline they cost one round trip.
    """
    pending = sorted((p for p in pending if p.decider.events), key=lambda p: str(p.saga_id))
    if not pending:
        return
    await _allocate_timers(conn, pending)
    cur = await conn.execute(_transition_statement(), _transition_params(pending))
    commands = [c for p in pending for c in p.decider.commands]
    sent = await command_store.send_commands(conn, commands) if commands else []
    passed = {r[0] for r in await cur.fetchall()}
    if len(passed) < len(pending) or any(msg_id is None for _d, _c, msg_id in sent):
        raise ConcurrencyError(
            f"{len(pending) - len(passed)} of {len(pending)} sagas moved meanwhile"
        )
    for p in pending:
        for domain, command_id in p.decider.withdraw:
            await _withdraw(conn, p.saga_id, domain, command_id)


async def commit_all_statements(
    conn: Conn, pending: Sequence[Pending], claims: Claims | None = None
) -> list[tuple[bytes, dict[str, Any]]] | None:
    """:func:`commit_all` as statements for a :class:`~commandbus.engine.db.script.Script`
    (each fails, undoing the script, unless it applies in full); the timers' message
    ids are drawn now. None when it cannot go that way (a cancelled saga's commands
    to withdraw from the troubleshooting queue). ``claims``: the commands to domains
    this process serves are claimed for them as they are sent."""
    pending = sorted((p for p in pending if p.decider.events), key=lambda p: str(p.saga_id))
    if not pending:
        return []
    if any(p.decider.withdraw for p in pending):
        return None
    await _allocate_timers(conn, pending)
    statements = [
        (
            _transition_statement(all_applied=True),
            _transition_params(pending, expected_rows=len(pending)),
        )
    ]
    commands = [c for p in pending for c in p.decider.commands]
    if commands:
        granted = None if claims is None else claims.claim(commands)
        if granted and claims is not None:
            claims.statement = len(statements)
        statements.append(command_store.send_commands_all_applied(commands, granted))
    return statements


async def commit_at_once(conn: Conn, pending: Sequence[Pending]) -> set[UUID] | None:
    """:func:`commit_all` in ONE round trip, as a transaction of its own (see
    :class:`~commandbus.engine.db.script.Script`; ``conn`` is one of the library's
    own, idle): the sagas recorded, or None when that did not happen (a saga exists
    or moved meanwhile, a command exists); nothing is written then and the caller
    goes the ordinary way, with :func:`commit`."""
    if not conn.autocommit or conn.info.transaction_status != TransactionStatus.IDLE:
        return None
    statements = await commit_all_statements(conn, pending)
    if statements is None:
        return None
    if not statements:
        return set()
    script = Script()
    for query, params in statements:
        script.add(query, params)
    if (undone := await run_all_applied(script, conn)) is not None:
        log.debug("saga transitions not committed at once (%s); one by one now", undone)
        return None
    return {p.saga_id for p in pending if p.decider.events}


async def _withdraw(conn: Conn, saga_id: UUID, domain: str, command_id: UUID) -> None:
    """Cancel a cancelled saga's command in the troubleshooting queue (its reply, a
    CANCELLED outcome, comes back to the saga like any other)."""
    # every call of the TSQ below runs on ``conn``: it never borrows from a pool
    tsq = TroubleshootingQueue(cast("AsyncConnectionPool[Conn]", None))
    try:
        await tsq.cancel(domain, command_id, reason=f"saga {saga_id} cancelled", conn=conn)
    except (InvalidStateError, CommandNotFoundError) as exc:
        # an operator acted on it meanwhile (its own save point is undone): the
        # command's reply decides the step
        log.info("saga %s: command %s not withdrawn: %s", saga_id, command_id, exc)


async def delete_messages(conn: Conn, msg_ids: Sequence[int]) -> None:
    await conn.execute(
        sql.SQL(queries.DELETE_MESSAGES).format(queue=queue_table(SAGA_QUEUE)),
        {"ids": list(msg_ids)},
    )
