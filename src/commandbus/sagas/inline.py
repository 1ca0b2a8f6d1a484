"""Sagas moved by a worker, in the transaction that records a step's outcome.

A worker given the saga registry (``Worker(..., sagas=registry)``) hands the
replies its outcomes would send to the saga queue to :class:`InlineTransitions`
instead: each saga is decided as the coordinator would decide it (the same fold,
decider and span) and committed, all of them or none, by
:func:`~commandbus.sagas.store.commit_all` (its events with the expected version,
its status row, its next commands), in the worker's transaction. One durable hop
per step instead of two.

What it does not take is sent as the reply message it would have been, for the
coordinator: a saga whose definition this process does not have, one whose status
row is missing, one whose deciding failed, and one a concurrent writer moved
first (another worker's parallel step, a timer); the expected version makes sure
a saga is moved once, by whoever is first.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from uuid import UUID

import attrs

from commandbus.config import Config
from commandbus.engine.commands.envelope import trace_context
from commandbus.engine.commands.store import Reply
from commandbus.engine.db.connect import Conn
from commandbus.engine.queues.tables import QueueRegistry
from commandbus.engine.worker.handoff import Claims
from commandbus.engine.worker.inline import Planned
from commandbus.sagas.decide import SAGA_QUEUE, Decider
from commandbus.sagas.deciding import TransitionCounts, decide, saga_of
from commandbus.sagas.definition import SagaRegistry
from commandbus.sagas.store import KeptStates, Pending, commit_all, commit_all_statements, load

log = logging.getLogger("commandbus.worker")

#: Sagas whose last committed state a worker keeps (as the coordinator does).
STATE_CACHE_SIZE = 10_000


@attrs.define
class InlineStats(TransitionCounts):
    """What a worker's saga transitions did (counted when they commit)."""

    #: replies left to the coordinator
    left: int = 0


@attrs.define
class _Taken:
    """The replies taken in one transaction, and what to do once it commits."""

    taken: frozenset[int]
    owner: InlineTransitions
    #: the transitions committed (every one decided: the commit is all or nothing)
    pending: list[Pending] = attrs.field(factory=list)
    left: int = 0

    def committed(self) -> None:
        self.owner.committed(self.pending, self.left)


class InlineTransitions:
    """Moves the sagas of a registry on their replies, inside a worker's transaction."""

    def __init__(self, registry: SagaRegistry, config: Config) -> None:
        self.registry = registry
        self.config = config
        self.stats = InlineStats()
        self._states = KeptStates(STATE_CACHE_SIZE)

    @property
    def queue(self) -> str:
        return SAGA_QUEUE

    @property
    def what(self) -> str:
        names = sorted(f"{s.name} v{s.version}" for s in self.registry)
        return "sagas " + ", ".join(names) if names else "no sagas"

    async def prepare(self, conn: Conn) -> None:
        queues = QueueRegistry()
        await queues.ensure(conn, SAGA_QUEUE)
        for domain in sorted(self.registry.domains):
            await queues.ensure(conn, domain)

    async def take(self, conn: Conn, replies: Sequence[Reply]) -> _Taken:
        by_saga, pending = await self._decide(conn, replies)
        # all or nothing: a saga moved meanwhile undoes the caller's transaction,
        # which is then recorded without taking any reply
        await commit_all(conn, pending)
        return self._taken(replies, by_saga, pending)

    async def plan(
        self, conn: Conn, replies: Sequence[Reply], claims: Claims | None = None
    ) -> Planned | None:
        by_saga, pending = await self._decide(conn, replies)
        statements = await commit_all_statements(conn, pending, claims)
        if statements is None:
            return None  # the states taken out are read again by take()
        return statements, self._taken(replies, by_saga, pending)

    def _taken(
        self, replies: Sequence[Reply], by_saga: dict[UUID, list[int]], pending: list[Pending]
    ) -> _Taken:
        taken = frozenset(i for p in pending for i in by_saga[p.saga_id])
        return _Taken(taken, self, pending, len(replies) - len(taken))

    async def _decide(
        self, conn: Conn, replies: Sequence[Reply]
    ) -> tuple[dict[UUID, list[int]], list[Pending]]:
        """The transitions the replies cause (by saga: the indexes of its replies)."""
        by_saga: dict[UUID, list[int]] = {}
        for i, r in enumerate(replies):
            saga_id = saga_of(r.message)
            if saga_id is not None:
                by_saga.setdefault(saga_id, []).append(i)
        if not by_saga:
            return by_saga, []
        loaded = self._states.take(by_saga)
        missing = [s for s in by_saga if s not in loaded]
        if missing:
            loaded.update(await load(conn, missing))
        pending: list[Pending] = []
        for saga_id, indexes in by_saga.items():
            found = loaded.get(saga_id)
            if found is None or found.ended_at is not None:
                continue  # no such saga, or replayed from its events: the coordinator's
            saga = self.registry.get(found.state.name, found.state.version)
            if saga is None:
                continue  # the coordinator says which definition is missing
            bodies = [replies[i] for i in indexes]
            decider, ok = decide(
                saga,
                found.state,
                self.config,
                parent_headers=trace_context(bodies[-1].headers) if bodies[-1].headers else {},
                message_id=None,
                feed=functools.partial(_feed, saga_id=saga_id, bodies=bodies),
            )
            if ok:
                pending.append(Pending(saga_id, found.version, decider, found.created_at))
        return by_saga, pending

    def committed(self, pending: list[Pending], left: int) -> None:
        """The transaction of :meth:`take` committed: keep the states, count."""
        self._states.keep(pending, {p.saga_id for p in pending})
        self.stats.left += left
        for p in pending:
            self.stats.count(p.decider)


def _feed(decider: Decider, *, saga_id: UUID, bodies: list[Reply]) -> bool:
    try:
        for r in bodies:
            decider.reply(None, r.message)
    except Exception:
        log.exception("saga %s: deciding failed; its replies go to the coordinator", saga_id)
        return False
    return True
