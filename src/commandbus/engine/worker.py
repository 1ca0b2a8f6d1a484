"""The worker: one batched reader per process, bounded handlers, grouped completions.

Shape of a running worker (every task is named and supervised):

* ``reader``: reads batches from the domain queue into a bounded in-flight set;
  when the queue is empty it sleeps until a wake-up NOTIFY, the next delayed
  message, or the poll interval, whichever comes first.
* runner tasks, at most ``concurrency`` at once: each takes messages from the
  in-memory backlog one after the other, runs the handler and queues the
  outcome (no task or semaphore round per message).
* ``flusher`` tasks (two by default, each with its own connection): each takes
  every outcome queued so far and records them in ONE statement (events,
  projection, queue actions, replies), so throughput is not one commit per
  command, and one group commits while the next is being built.
* ``listener``: LISTENs for the queue's wake-up channel.

Losing the database makes the reader, flusher and listener reconnect with
tenacity backoff; if a side task dies of anything else the worker stops loudly.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

import attrs
import psycopg
from psycopg_pool import AsyncConnectionPool

from commandbus.config import Config
from commandbus.engine import command_store, event_store
from commandbus.engine import event_types as ev
from commandbus.engine.codec import command_from_message, dumps
from commandbus.engine.command_store import ReadMessage, Transition
from commandbus.engine.connections import Conn
from commandbus.engine.context import HandlerContext
from commandbus.engine.event_store import StreamAppend
from commandbus.engine.log import command_id_var, correlation_id_var
from commandbus.engine.models import Command, NewEvent
from commandbus.engine.outcomes import OutcomeBuilder
from commandbus.engine.queues import QueueRegistry, wakeup_channel
from commandbus.engine.registry import HandlerRegistry
from commandbus.engine.resilient import ResilientConnection, connect, retrying
from commandbus.engine.retry import RetryPolicy
from commandbus.errors import (
    DatabaseUnavailableError,
    PayloadError,
    PermanentCommandError,
    UnknownCommandTypeError,
)

log = logging.getLogger("commandbus.worker")
T = TypeVar("T")


@attrs.define
class WorkerStats:
    """Counts of what a worker did; ``run()`` returns them when it stops."""

    domain: str
    completed: int = 0
    failed: int = 0
    retried: int = 0
    troubleshooting: int = 0
    quarantined: int = 0
    conflicts: int = 0
    released: int = 0
    started_at: float = attrs.field(factory=time.monotonic)
    stopped_at: float | None = None

    @property
    def processed(self) -> int:
        return self.completed + self.failed + self.retried + self.troubleshooting

    def summary(self) -> str:
        elapsed = (self.stopped_at or time.monotonic()) - self.started_at
        return (
            f"worker {self.domain}: {self.processed} processed in {elapsed:.1f}s "
            f"(completed {self.completed}, failed {self.failed}, retried {self.retried}, "
            f"troubleshooting {self.troubleshooting}, quarantined {self.quarantined}, "
            f"duplicate deliveries {self.conflicts}, released {self.released})"
        )


@attrs.define
class _Flight:
    """A message between read and recorded outcome."""

    msg: ReadMessage
    started: bool = False


class Worker:
    """Processes one domain's commands with the handlers of a registry."""

    def __init__(
        self,
        url: str,
        registry: HandlerRegistry,
        *,
        domain: str,
        concurrency: int = 10,
        visibility_timeout: timedelta | None = None,
        batch_size: int = 100,
        config: Config | None = None,
        archive_completed: bool = False,
        reconnect_timeout: timedelta = timedelta(minutes=5),
        flushers: int = 2,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if flushers < 1:
            raise ValueError(f"flushers must be >= 1, got {flushers}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        registry.validate_for(domain)
        self.config = config or Config.from_env()
        self.domain = domain
        self.registry = registry
        self.concurrency = concurrency
        vt = visibility_timeout or self.config.visibility_timeout
        if vt < timedelta(seconds=1):
            raise ValueError("visibility_timeout must be at least one second")
        self._vt = vt.total_seconds()
        self._batch_size = batch_size
        # Messages held at once (read, running or waiting to be recorded), and the
        # room there must be before the next read: reading a handful at a time
        # would cost a round trip per handful.
        # Up to two batches: the next one is read while the last is handled and
        # recorded. Keep 2 * batch_size * handler time / concurrency well under
        # the visibility timeout.
        self._capacity = max(2 * batch_size, concurrency + batch_size)
        self._read_threshold = max(1, min(batch_size, self._capacity // 2))
        self._url = url
        self._outcomes = OutcomeBuilder(
            RetryPolicy(self.config), archive_completed=archive_completed
        )
        self._reconnect_timeout = reconnect_timeout.total_seconds()
        self.stats = WorkerStats(domain=domain)

        self._backlog: collections.deque[_Flight] = collections.deque()
        self._runners: set[asyncio.Task[None]] = set()
        self._flights: dict[int, _Flight] = {}
        self._pending: list[tuple[Transition, _Flight]] = []
        self._pending_event = asyncio.Event()
        self._room = asyncio.Event()
        self._wake = asyncio.Event()
        self._stop_event = asyncio.Event()
        self._stop_timeout = 30.0
        self._hurry = asyncio.Event()  # the stop timeout changed
        self._running = False
        self._finished = asyncio.Event()
        #: set once the worker is connected and listening for new messages
        self.ready = asyncio.Event()
        self._stopping = False
        self._closing = False
        retry_for = reconnect_timeout.total_seconds()
        # The reader only moves messages' visibility forward. If the server crashed
        # before a read's commit reached disk, those messages would just become
        # visible again early: a redelivery, which the version-checked outcome
        # already handles. So reads skip the WAL flush wait; outcomes never do.
        self._reader = ResilientConnection(
            url,
            what=f"worker {domain} reader",
            retry_for=retry_for,
            setup=("SET synchronous_commit = off",),
        )
        self._flushers = [
            ResilientConnection(url, what=f"worker {domain} flusher", retry_for=retry_for)
            for _ in range(flushers)
        ]
        self._pool: AsyncConnectionPool[Conn] | None = None

    # -- public lifecycle -------------------------------------------------------------------

    def request_stop(self, timeout: float | None = None) -> None:
        """Ask the worker to stop (safe from signal handlers, idempotent).

        A later call with a shorter ``timeout`` shortens the wait for running
        handlers, even while it is under way (``0``: cancel them now).
        """
        if timeout is not None:
            self._stop_timeout = min(self._stop_timeout, timeout)
            self._hurry.set()
        self._stop_event.set()
        self._wake.set()
        self._room.set()

    async def stop(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """Stop gracefully and wait for it: in-flight handlers get ``timeout`` seconds.

        Idempotent, and callable before :meth:`run` (which then returns at once).
        """
        self.request_stop(timeout)
        if self._running:
            await self._finished.wait()

    async def run(self) -> WorkerStats:
        """Run until :meth:`stop` (or a signal, via the CLI); returns the stats."""
        if self._running:
            raise RuntimeError("this worker is already running")
        if self._stop_event.is_set():
            self.stats.stopped_at = time.monotonic()
            return self.stats
        self._running = True
        self.stats.started_at = time.monotonic()
        self._pool = AsyncConnectionPool(
            self._url,
            min_size=0,
            max_size=max(2, min(self.concurrency, 20)),
            kwargs={"autocommit": True},
            check=AsyncConnectionPool.check_connection,
            open=False,
        )
        await self._pool.open()
        try:
            # a worker may start before anything was sent to its domain
            await self._reader.run(lambda c: QueueRegistry().ensure(c, self.domain))
            for flusher in self._flushers:
                await flusher.open()
            log.info(
                "worker serving domain %s (%s) concurrency=%d vt=%.0fs",
                self.domain,
                ", ".join(self.registry.command_types(self.domain)),
                self.concurrency,
                self._vt,
            )
            await self._supervise()
        finally:
            await self._shutdown()
            self._running = False
            self._finished.set()
            self.stats.stopped_at = time.monotonic()
            log.info("%s", self.stats.summary())
        return self.stats

    # -- supervision ------------------------------------------------------------------------

    async def _supervise(self) -> None:
        reader = asyncio.create_task(self._read_loop(), name=f"commandbus-reader-{self.domain}")
        flushers = [
            asyncio.create_task(self._flush_loop(i), name=f"commandbus-flusher-{self.domain}-{i}")
            for i in range(len(self._flushers))
        ]
        listener = asyncio.create_task(
            self._listen_loop(), name=f"commandbus-listener-{self.domain}"
        )
        stopper = asyncio.create_task(self._stop_event.wait(), name="commandbus-stop")
        side = {*flushers, listener}
        try:
            done, _ = await asyncio.wait(
                {reader, stopper, *side}, return_when=asyncio.FIRST_COMPLETED
            )
            for task in done & ({reader} | side):
                if task.exception() is not None:
                    log.error("worker task %s died; stopping", task.get_name())
                    raise task.exception()  # type: ignore[misc]
            # A stop was requested: stop reading, let handlers finish.
            self._stopping = True
            self._wake.set()
            self._room.set()
            await reader
            await self._drain_handlers()
            self._pending_event.set()
        finally:
            self._stopping = True
            for task in (reader, listener, stopper):
                task.cancel()
            # let the flusher record what is queued, then end
            self._closing = True
            self._pending_event.set()
            running = [f for f in flushers if not f.done()]
            if running:
                _done, late = await asyncio.wait(running, timeout=30)
                if late or self._pending:
                    log.warning("could not record %d pending outcomes", len(self._pending))
                for task in late:
                    task.cancel()
            for task in (reader, listener, stopper, *flushers):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _drain_handlers(self) -> None:
        """Let running handlers finish within the stop timeout (which may shrink)."""
        started = time.monotonic()
        while True:
            running: list[asyncio.Future[Any]] = [t for t in self._runners if not t.done()]
            left = self._stop_timeout - (time.monotonic() - started)
            if not running or left <= 0:
                break
            self._hurry.clear()
            hurry = asyncio.create_task(self._hurry.wait(), name="commandbus-stop-hurry")
            await asyncio.wait([*running, hurry], timeout=left, return_when=asyncio.FIRST_COMPLETED)
            hurry.cancel()
        late = [t for t in self._runners if not t.done()]
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late, timeout=5)

    async def _shutdown(self) -> None:
        """Make every message we still hold visible again, then close connections."""
        left = list(self._flights.values())
        if left:
            unstarted = [f.msg.msg_id for f in left if not f.started]
            started = [f.msg.msg_id for f in left if f.started]
            try:
                conn = await self._connect()
                async with conn:
                    await command_store.release(conn, self.domain, started, unstarted)
                self.stats.released += len(left)
            except Exception:  # pragma: no cover - the database is gone
                log.warning("could not release %d messages; they reappear after vt", len(left))
            self._flights.clear()
        for held in (self._reader, *self._flushers):
            with contextlib.suppress(Exception):
                await held.close()
        if self._pool is not None:
            await self._pool.close()

    # -- connections ------------------------------------------------------------------------

    async def _retrying(self, fn: Callable[[], Awaitable[T]]) -> T:
        return await retrying(fn, retry_for=self._reconnect_timeout, what=f"worker {self.domain}")

    async def _connect(self) -> Conn:
        return await self._retrying(lambda: connect(self._url))

    # -- reading ----------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        poll = self.config.poll_interval.total_seconds()
        while not self._stopping and not self._stop_event.is_set():
            room = self._capacity - len(self._flights)
            if room < self._read_threshold and self._flights:
                self._room.clear()
                await self._room.wait()
                continue
            qty = min(self._batch_size, room)
            self._wake.clear()
            msgs = await self._reader.run(
                functools.partial(
                    command_store.read_batch, domain=self.domain, qty=qty, vt_seconds=self._vt
                )
            )
            if self._stop_event.is_set():
                # read after stop was requested: hand them straight back
                for m in msgs:
                    self._flights[m.msg_id] = _Flight(msg=m)
                return
            for m in msgs:
                self._dispatch(m)
            self._start_runners()
            if len(msgs) == qty:
                await asyncio.sleep(0)
                continue
            wait = poll
            nxt = await self._reader.run(
                lambda c: command_store.seconds_until_next_visible(c, self.domain)
            )
            if nxt is not None:
                wait = min(wait, max(nxt, 0.001))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait)

    async def _listen_loop(self) -> None:
        channel = wakeup_channel(self.domain)
        while True:
            try:
                conn = await self._connect()
                async with conn:
                    await conn.execute(f'LISTEN "{channel}"')  # channel is a validated name
                    self._wake.set()  # catch up on anything sent while not listening
                    self.ready.set()
                    async for _ in conn.notifies():
                        self._wake.set()
            except (psycopg.OperationalError, DatabaseUnavailableError) as exc:
                log.warning("listener lost its connection (%s); reconnecting", exc)
                await asyncio.sleep(0.5)

    def _dispatch(self, msg: ReadMessage) -> None:
        flight = _Flight(msg=msg)
        self._flights[msg.msg_id] = flight
        self._backlog.append(flight)

    def _start_runners(self) -> None:
        """Start handler runners, at most ``concurrency``, for what the backlog holds."""
        while len(self._runners) < min(self.concurrency, len(self._backlog)):
            task = asyncio.create_task(self._run_backlog(), name=f"commandbus-{self.domain}-runner")
            self._runners.add(task)
            task.add_done_callback(self._runners.discard)

    async def _run_backlog(self) -> None:
        """Handle messages from the backlog one after the other until it is empty."""
        handled = 0
        while self._backlog and not self._stopping:
            flight = self._backlog.popleft()
            try:
                await self._handle(flight)
            except Exception:
                # e.g. the database went away while recording: the message comes
                # back after its visibility timeout; keep serving the others
                log.exception("handling message %s failed", flight.msg.msg_id)
                self._forget(flight)
            handled += 1
            if handled % 32 == 0:
                await asyncio.sleep(0)  # let the reader and flushers run

    # -- handling ---------------------------------------------------------------------------

    async def _handle(self, flight: _Flight) -> None:
        msg = flight.msg
        try:
            command = command_from_message(self.domain, msg.message)
        except (KeyError, TypeError, ValueError) as exc:
            await self._quarantine(flight, f"undecodable message: {exc!r}")
            return
        if msg.version is None:
            await self._quarantine(
                flight, f"no command {command.command_id} was sent in domain {self.domain}"
            )
            return
        flight.started = True
        transition, ctx = await self._attempt(command, msg)
        if ctx is not None and ctx.transaction is not None:
            await self._record_with_handler_tx(flight, transition, ctx)
        else:
            self._pending.append((transition, flight))
            self._pending_event.set()

    async def _attempt(
        self, command: Command, msg: ReadMessage
    ) -> tuple[Transition, HandlerContext | None]:
        attempt = msg.read_ct
        version = int(msg.version or 0)
        prefix = self._outcomes.lost_attempts(command, attempt, int(msg.attempts or 0))
        version_after_prefix = version  # prefix events are appended with the outcome
        handler = self.registry.get(self.domain, command.command_type)
        if handler is None:
            exc = UnknownCommandTypeError(
                f"no handler for command type {command.command_type!r} in domain {self.domain!r}"
            )
            _kind, t = self._outcomes.failure(
                command,
                exc,
                attempt=attempt,
                version=version_after_prefix,
                msg_id=msg.msg_id,
                prefix=prefix,
                kind="unknown_command_type",
            )
            return t, None
        assert self._pool is not None
        ctx = HandlerContext(command=command, attempt=attempt, msg_id=msg.msg_id, pool=self._pool)
        tok_c = correlation_id_var.set(command.correlation_id)
        tok_i = command_id_var.set(command.command_id)
        try:
            try:
                result = await handler(command, ctx)
                if result is not None and not isinstance(result, int | bool):
                    dumps(result, what="handler result")  # refuse it here, not in the flush
            except PayloadError as exc:
                raise PermanentCommandError(str(exc)) from exc
            return (
                self._outcomes.success(
                    command,
                    result,
                    attempt=attempt,
                    version=version,
                    msg_id=msg.msg_id,
                    prefix=prefix,
                ),
                ctx,
            )
        except asyncio.CancelledError:
            await ctx.finish(commit=False)
            raise
        except Exception as exc:
            await ctx.finish(commit=False)
            kind, t = self._outcomes.failure(
                command, exc, attempt=attempt, version=version, msg_id=msg.msg_id, prefix=prefix
            )
            log.log(
                logging.INFO if kind == "retried" else logging.WARNING,
                "command %s attempt %d: %s (%s)",
                command.command_type,
                attempt,
                kind,
                exc,
            )
            return t, None
        finally:
            correlation_id_var.reset(tok_c)
            command_id_var.reset(tok_i)

    async def _record_with_handler_tx(
        self, flight: _Flight, transition: Transition, ctx: HandlerContext
    ) -> None:
        conn = ctx.transaction
        assert conn is not None
        try:
            ok = await command_store.record_transitions(conn, [transition])
            await ctx.finish(commit=bool(ok))
        except BaseException:
            await ctx.finish(commit=False)
            self._forget(flight)
            raise
        self._count(transition, recorded=bool(ok))
        self._forget(flight)

    async def _quarantine(self, flight: _Flight, reason: str) -> None:
        """Set a poison message aside (archived) with an event saying why."""
        msg = flight.msg
        log.error("quarantining message %s of queue %s: %s", msg.msg_id, self.domain, reason)

        async def op(conn: Conn) -> None:
            async with conn.transaction():
                await event_store.append(
                    conn,
                    [
                        StreamAppend(
                            stream_id=f"quarantine:{self.domain}:{msg.msg_id}",
                            stream_type=ev.QUARANTINE_STREAM,
                            expected_version=0,
                            events=[
                                NewEvent(
                                    event_type=ev.MESSAGE_QUARANTINED,
                                    data={
                                        "domain": self.domain,
                                        "msg_id": msg.msg_id,
                                        "reason": reason,
                                        "message": msg.message,
                                    },
                                )
                            ],
                        )
                    ],
                )
                await command_store.archive(conn, self.domain, [msg.msg_id])

        async def pooled() -> None:
            assert self._pool is not None
            async with self._pool.connection() as conn:
                await op(conn)

        try:
            await self._retrying(pooled)
            self.stats.quarantined += 1
        finally:
            self._forget(flight)

    # -- recording --------------------------------------------------------------------------

    async def _flush_loop(self, i: int) -> None:
        """Record queued outcomes, a group at a time, until closed and drained."""
        while True:
            await self._pending_event.wait()
            self._pending_event.clear()
            if self._pending:
                batch, self._pending = self._pending, []
                await self._flush(i, batch)
            elif self._closing:
                return

    async def _flush(self, i: int, batch: list[tuple[Transition, _Flight]]) -> None:
        seen: set[str] = set()
        unique: list[tuple[Transition, _Flight]] = []
        clashing: list[tuple[Transition, _Flight]] = []
        for item in batch:
            sid = item[0].stream_id
            (clashing if sid in seen else unique).append(item)
            seen.add(sid)
        transitions = [t for t, _f in unique]
        try:
            ok = await self._flushers[i].run(
                lambda c: command_store.record_transitions(c, transitions)
            )
        except (psycopg.Error, PayloadError) as exc:
            # Not a lost connection (those are retried): one outcome the database
            # refuses must not take its group, or the worker, down with it.
            if len(unique) > 1:
                for item in unique:
                    await self._flush(i, [item])
                ok = set()
                unique = []
            else:
                await self._record_unrecordable(i, unique[0], exc)
                return
        for t, f in unique:
            self._count(t, recorded=t.stream_id in ok)
            self._forget(f)
        for t, f in clashing:
            self._count(t, recorded=False)
            self._forget(f)

    async def _record_unrecordable(
        self, i: int, item: tuple[Transition, _Flight], exc: BaseException
    ) -> None:
        """Send a command whose outcome the database refused to the TSQ, saying why."""
        t, flight = item
        log.error("outcome of command %s could not be recorded: %s", t.command_id, exc)
        fallback = self._outcomes.unrecordable(t, exc)
        try:
            ok = await self._flushers[i].run(
                lambda c: command_store.record_transitions(c, [fallback])
            )
            self._count(fallback, recorded=fallback.stream_id in ok)
        except psycopg.Error:
            log.exception("command %s: not even its failure could be recorded", t.command_id)
        finally:
            self._forget(flight)

    def _count(self, t: Transition, *, recorded: bool) -> None:
        if not recorded:
            self.stats.conflicts += 1
            log.warning(
                "outcome for command %s not recorded: its stream moved on "
                "(another delivery of the same message recorded first)",
                t.command_id,
            )
            return
        kind = t.events[-1].event_type
        if kind == ev.COMMAND_COMPLETED:
            self.stats.completed += 1
        elif kind == ev.COMMAND_FAILED:
            self.stats.failed += 1
        elif kind == ev.COMMAND_RETRY_SCHEDULED:
            self.stats.retried += 1
        else:
            self.stats.troubleshooting += 1

    def _forget(self, flight: _Flight) -> None:
        self._flights.pop(flight.msg.msg_id, None)
        if not self._flights or self._capacity - len(self._flights) >= self._read_threshold:
            self._room.set()
