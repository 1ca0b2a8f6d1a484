"""The saga coordinator: consumes the saga queue and moves sagas, exactly once.

Every command a saga sends replies to the saga queue; step timers and operators'
requests wait there too. The coordinator is a
:class:`~commandbus.engine.queues.consumer.QueueConsumer` over that queue (the
same reader, wake-ups, grouped recording and staged stop as a worker): a group of
messages is decided saga by saga (:class:`~commandbus.sagas.decide.Decider`) and
committed in ONE transaction of a constant number of statements: usually in one
round trip (:func:`~commandbus.sagas.store.commit_at_once`), else statement by
statement (:func:`~commandbus.sagas.store.commit`). Several coordinators may run
at once: a saga another one moved meanwhile is reloaded and decided again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import timedelta
from functools import lru_cache
from typing import Any
from uuid import UUID

import attrs
import psycopg
from psycopg import sql

from commandbus.arguments import int_arg
from commandbus.config import Config
from commandbus.engine.commands.envelope import trace_context
from commandbus.engine.db.connect import Conn, ResilientConnection
from commandbus.engine.db.embedded import resolve_database_url
from commandbus.engine.observability.tracing import configure_tracing_from_env
from commandbus.engine.queues import sql as queue_sql
from commandbus.engine.queues.block import BlockRun
from commandbus.engine.queues.consumer import QueueConsumer
from commandbus.engine.queues.stopping import DEFAULT_GRACE
from commandbus.engine.queues.tables import (
    QueueRegistry,
    wakeup_channel,
    wakeup_throttle_ms,
    with_queue,
)
from commandbus.errors import CommandBusError, DatabaseUnavailableError, ValidationError
from commandbus.sagas import sql as queries
from commandbus.sagas.decide import SAGA_QUEUE, Decider
from commandbus.sagas.deciding import TransitionCounts, decide, saga_of
from commandbus.sagas.definition import Saga, SagaRegistry
from commandbus.sagas.store import (
    KeptStates,
    Loaded,
    Pending,
    commit,
    commit_at_once,
    delete_messages,
    load,
)

log = logging.getLogger("commandbus.coordinator")

#: A message for a saga whose definition version is not registered here waits this long.
BLOCKED_RETRY_SECONDS = 30.0
#: Rounds of deciding again the sagas another writer moved meanwhile, per group.
CONFLICT_ROUNDS = 8
#: Sagas whose last committed state a coordinator keeps, to decide their next
#: transition without reading it back (the oldest are forgotten first).
STATE_CACHE_SIZE = 10_000


@attrs.frozen
class SagaMessage:
    """A message of the saga queue: a reply, a timer, or an operator's request."""

    msg_id: int
    read_ct: int
    message: Any
    headers: Any


@attrs.define
class CoordinatorStats(TransitionCounts):
    """What a coordinator did (counted when its transitions commit)."""

    messages: int = 0
    conflicts: int = 0
    blocked: int = 0
    ignored: int = 0
    started_at: float | None = None
    stopped_at: float | None = None

    def summary(self) -> str:
        return (
            f"coordinator: {self.messages} messages, {self.transitions} transitions, "
            f"{self.completed} sagas completed, {self.compensated} compensated, "
            f"{self.failed} failed, {self.conflicts} conflicts retried, "
            f"{self.ignored} bad messages, {self.blocked} waiting for a definition"
        )


@lru_cache(maxsize=1)
def _read_statement() -> sql.Composed:
    return with_queue(queries.READ, SAGA_QUEUE)


class Coordinator:
    """Runs the sagas of a registry: ``async with Coordinator(url, registry):``.

    ``url=None``: ``DATABASE_URL``, else the embedded server, joined when the
    coordinator is made and kept until the process exits (as ``Worker`` does).
    """

    def __init__(
        self,
        url: str | None,
        registry: SagaRegistry,
        *,
        batch_size: int = 100,
        visibility_timeout: timedelta = timedelta(seconds=30),
        config: Config | None = None,
        reconnect_timeout: timedelta = timedelta(minutes=5),
        flushers: int = 2,
    ) -> None:
        if url is not None and (not isinstance(url, str) or not url.strip()):
            raise ValidationError(f"url must be a connection string or None, got {url!r:.60}")
        if not isinstance(registry, SagaRegistry):
            raise ValidationError(f"registry must be a SagaRegistry, got {registry!r:.60}")
        if config is not None and not isinstance(config, Config):
            raise ValidationError(f"config must be a Config, got {config!r:.60}")
        batch_size = int_arg(batch_size, "batch_size", low=1, high=10_000)
        flushers = int_arg(flushers, "flushers", low=1, high=16)
        if not isinstance(visibility_timeout, timedelta) or not (
            timedelta(seconds=1) <= visibility_timeout <= timedelta(days=1)
        ):
            raise ValidationError(
                f"visibility_timeout must be a timedelta from 1 s to 1 day, "
                f"got {visibility_timeout!r}"
            )
        if not isinstance(reconnect_timeout, timedelta) or reconnect_timeout < timedelta(0):
            raise ValidationError(
                f"reconnect_timeout must be a timedelta >= 0, got {reconnect_timeout!r}"
            )
        self.config = config or Config.from_env()
        # None: DATABASE_URL, else the embedded server (joined now, for the process)
        url = resolve_database_url(url, self.config)
        self.registry = registry
        self.stats = CoordinatorStats()
        self._vt = visibility_timeout.total_seconds()
        self._consumer: QueueConsumer[SagaMessage, SagaMessage] = QueueConsumer(
            url,
            self,
            name="coordinator",
            wakeup_channel=wakeup_channel(SAGA_QUEUE),
            concurrency=batch_size,
            batch_size=batch_size,
            flushers=flushers,
            poll_interval=self.config.poll_interval.total_seconds(),
            reconnect_timeout=reconnect_timeout.total_seconds(),
            # a saga's messages are decided by one flusher, in the order they were
            # read: an operator's resume then pause is never applied pause first
            order_key=lambda m: saga_of(m.message),
        )
        self._block = BlockRun("commandbus-coordinator")
        self._warned: set[tuple[str, int]] = set()
        self._states = KeptStates(STATE_CACHE_SIZE)

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def ready(self) -> asyncio.Event:
        """Set once the coordinator is connected and listening."""
        return self._consumer.ready

    def request_stop(self, timeout: timedelta | float | None = None) -> None:
        """Ask the coordinator to stop (safe from signal handlers, idempotent)."""
        self._consumer.request_stop(timeout)

    async def stop(self, timeout: timedelta | float = DEFAULT_GRACE) -> None:  # noqa: ASYNC109
        """Stop and wait: what was decided is recorded, the rest handed back."""
        await self._consumer.stop(timeout)

    async def run(self) -> CoordinatorStats:
        """Run until :meth:`stop`; cancelling it stops at once, then re-raises.

        With ``COMMANDBUS_OTEL=1`` it first sets up the OpenTelemetry SDK (as
        :meth:`Worker.run <commandbus.Worker.run>` does).
        """
        configure_tracing_from_env(service_name="commandbus-coordinator")
        self.stats.started_at = time.monotonic()
        try:
            await self._consumer.run(opened=self._opened)
        finally:
            self.stats.stopped_at = time.monotonic()
        log.info("%s", self.stats.summary())
        if self._consumer.exit is not None:
            raise self._consumer.exit  # raised by a data builder, after a graceful stop
        return self.stats

    async def __aenter__(self) -> Coordinator:
        await self._block.enter(self.run, self.ready, lambda: self.request_stop(0))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._block.exit(self.request_stop)

    async def _opened(self) -> None:
        log.info(
            "coordinator running %s",
            ", ".join(f"{s.name} v{s.version}" for s in self.registry) or "no sagas",
        )

    # -- consumer hooks -----------------------------------------------------------------

    async def prepare(self, conn: Conn) -> None:
        from commandbus.migrations import ensure_schema_current

        await ensure_schema_current(conn)
        queues = QueueRegistry()
        await queues.ensure(conn, SAGA_QUEUE)
        for domain in sorted(self.registry.domains):
            await queues.ensure(conn, domain)
        throttle_ms = await wakeup_throttle_ms(conn, SAGA_QUEUE)
        if throttle_ms is not None:
            self._consumer.settle_seconds = (throttle_ms + 1) / 1000

    async def read(self, conn: Conn, qty: int) -> Sequence[SagaMessage]:
        cur = await conn.execute(_read_statement(), {"qty": qty, "vt": self._vt})
        rows = await cur.fetchall()
        return [SagaMessage(r[0], r[1], r[2], r[3]) for r in sorted(rows, key=lambda r: r[0])]

    async def next_visible(self, conn: Conn) -> float | None:
        cur = await conn.execute(with_queue(queue_sql.NEXT_VISIBLE, SAGA_QUEUE))
        row = await cur.fetchone()
        return None if row is None or row[0] is None else float(row[0])

    async def handle(self, msg: SagaMessage) -> SagaMessage | None:
        return msg  # all the work is in record: a group is decided and committed at once

    async def release(self, conn: Conn, started: list[int], unstarted: list[int]) -> None:
        if started or unstarted:
            await conn.execute(
                with_queue(queue_sql.RELEASE, SAGA_QUEUE),
                {"started": list(started), "unstarted": list(unstarted)},
            )

    def suspect(self, msg: SagaMessage) -> bool:
        return False  # no user code runs per message; a crash takes nothing else down

    async def postpone(self, conn: Conn, msg_ids: list[int], seconds: float) -> None:
        await conn.execute(
            with_queue(queue_sql.POSTPONE, SAGA_QUEUE), {"msg_ids": msg_ids, "delay": seconds}
        )

    async def record(
        self, flusher: ResilientConnection, group: list[tuple[SagaMessage, SagaMessage]]
    ) -> None:
        msgs = sorted((m for m, _ in group), key=lambda m: m.msg_id)
        await self._record_group(flusher, msgs)

    async def _record_group(self, flusher: ResilientConnection, msgs: list[SagaMessage]) -> None:
        try:
            for _ in range(CONFLICT_ROUNDS):
                msgs = await flusher.run(functools.partial(self._record, msgs=msgs))
                if not msgs:
                    return
                self.stats.conflicts += len({saga_of(m.message) for m in msgs})
        except (psycopg.Error, CommandBusError) as exc:
            if isinstance(exc, DatabaseUnavailableError):
                raise  # the connection is gone for good: the consumer stops
            # Not a lost connection (those are retried): one saga the database
            # refuses must not take its group, or the coordinator, down with it.
            sagas: dict[UUID | None, list[SagaMessage]] = defaultdict(list)
            for m in msgs:
                sagas[saga_of(m.message)].append(m)
            if len(sagas) > 1:
                for items in sagas.values():
                    await self._record_group(flusher, items)
                return
            log.exception("saga %s: its transition failed; its messages wait", next(iter(sagas)))
            ids = [m.msg_id for m in msgs]
            await flusher.run(lambda c: self.postpone(c, ids, BLOCKED_RETRY_SECONDS))
            return
        # still contended: hand them back at once, to be decided again
        await flusher.run(lambda c: self.release(c, [m.msg_id for m in msgs], []))

    # -- deciding -----------------------------------------------------------------------

    async def _record(self, conn: Conn, msgs: Sequence[SagaMessage]) -> list[SagaMessage]:
        """Decide and commit a group in one transaction; returns the messages to retry."""
        by_saga: dict[UUID, list[SagaMessage]] = defaultdict(list)
        bad: list[int] = []
        for m in msgs:
            saga_id = saga_of(m.message)
            if saga_id is None:
                log.error("saga queue message %s is not for a saga: %.200r", m.msg_id, m.message)
                bad.append(m.msg_id)
            else:
                by_saga[saga_id].append(m)
        loaded = self._states.take(by_saga)
        # read first: in the usual case (every saga decided, none moved meanwhile) the
        # transitions then go in one round trip, as one transaction (commit_at_once)
        loaded.update(await load(conn, [s for s in by_saga if s not in loaded]))
        postponed: list[int] = []
        pending = self._decide_group(by_saga, loaded, bad, postponed)
        passed = None
        if not bad and not postponed and all(p.decider.events for p in pending):
            passed = await commit_at_once(conn, pending)
        if passed is None:
            async with conn.transaction():
                passed = await commit(conn, pending)
                if bad:
                    await delete_messages(conn, bad)
                if postponed:
                    await self.postpone(conn, postponed, BLOCKED_RETRY_SECONDS)
        self._states.keep(pending, passed)
        self.stats.ignored += len(bad)
        self.stats.blocked += len(postponed)
        retry: list[SagaMessage] = []
        for p in pending:
            if p.saga_id in passed or not p.decider.events:
                if p.decider.events:
                    self.stats.count(p.decider)
                self.stats.messages += len(by_saga[p.saga_id])
            elif not set(m.msg_id for m in by_saga[p.saga_id]) <= set(postponed):
                retry.extend(by_saga[p.saga_id])
        return sorted(retry, key=lambda m: m.msg_id)

    def _decide_group(
        self,
        by_saga: dict[UUID, list[SagaMessage]],
        loaded: dict[UUID, Loaded],
        bad: list[int],
        postponed: list[int],
    ) -> list[Pending]:
        """Decide each saga's messages; those of a missing saga join ``bad``, those that
        wait (no definition, a deciding error) ``postponed``."""
        pending: list[Pending] = []
        for saga_id, items in by_saga.items():
            found = loaded.get(saga_id)
            if found is None:
                log.error("no saga %s: dropping %d messages for it", saga_id, len(items))
                bad.extend(m.msg_id for m in items)
                continue
            saga = self.registry.get(found.state.name, found.state.version)
            decider, ok = decide(
                saga,
                found.state,
                self.config,
                parent_headers=_trace(items[-1].headers),
                message_id=items[-1].msg_id,
                feed=functools.partial(
                    self._decide, saga=saga, found=found, items=items, postponed=postponed
                ),
            )
            if ok:
                pending.append(
                    Pending(saga_id, found.version, decider, found.created_at, found.ended_at)
                )
        return pending

    def _decide(
        self,
        decider: Decider,
        *,
        saga: Saga | None,
        found: Loaded,
        items: list[SagaMessage],
        postponed: list[int],
    ) -> bool:
        """Feed a saga's messages to its decider; False when its messages wait instead."""
        if saga is None:
            self._missing(found.state.name, found.state.version)
            decider.blocked(
                items[0].msg_id,
                f"saga {found.state.name!r} version {found.state.version} is not "
                "registered with the coordinator",
            )
            postponed.extend(m.msg_id for m in items)
            return True
        try:
            for m in items:
                _feed(decider, m)
        except Exception:
            log.exception("saga %s: deciding failed; its messages wait", found.state.saga_id)
            postponed.extend(m.msg_id for m in items)
            return False
        return True

    def _missing(self, name: str, version: int) -> None:
        if (name, version) not in self._warned:
            self._warned.add((name, version))
            log.error(
                "saga %r version %d is not registered with this coordinator: its sagas "
                "wait (registered: %s)",
                name,
                version,
                ", ".join(f"{s.name} v{s.version}" for s in self.registry) or "none",
            )


def _trace(headers: Any) -> dict[str, str]:
    return trace_context(headers) if headers else {}


def _feed(decider: Decider, m: SagaMessage) -> None:
    body = m.message
    kind = body.get("kind")
    if kind == "timer":
        decider.timer(m.msg_id, body)
    elif kind == "control":
        decider.control(m.msg_id, body)
    else:
        decider.reply(m.msg_id, body)
