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
from collections.abc import Awaitable, Callable, Iterable
from datetime import timedelta
from typing import TypeVar

import attrs
import psycopg
from psycopg.pq import TransactionStatus
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
    CommandBusError,
    DatabaseUnavailableError,
    PayloadError,
    PermanentCommandError,
    TransientCommandError,
    UnknownCommandTypeError,
    ValidationError,
)

log = logging.getLogger("commandbus.worker")
T = TypeVar("T")

#: seconds running handlers get when a stop names no timeout
DEFAULT_GRACE = 30.0
#: seconds a stop may take past its grace to record what finished and hand back the rest
FINAL_SECONDS = 1.0


def _seconds(value: timedelta | float, name: str) -> float:
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ValidationError(f"{name} must be a timedelta or a number of seconds, got {value!r}")
    if not seconds >= 0 or seconds == float("inf"):
        raise ValidationError(f"{name} must be a finite duration >= 0, got {value!r}")
    return seconds


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


@attrs.frozen
class _Attempt:
    """One delivery of a command being handled: what its outcome is recorded against."""

    command: Command
    number: int  # the delivery count (PGMQ's read_ct)
    version: int  # the stream version the delivery was read at
    msg_id: int
    recorded: int  # attempts recorded so far
    prefix: list[NewEvent]  # CommandAttemptLost events for earlier, unrecorded deliveries


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
        for name, value, top in (
            ("concurrency", concurrency, 10_000),
            ("flushers", flushers, 16),
            ("batch_size", batch_size, 10_000),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
                raise ValidationError(f"{name} must be an integer from 1 to {top}, got {value!r}")
        registry.validate_for(domain)
        self.config = config or Config.from_env()
        self.domain = domain
        self.registry = registry
        self.concurrency = concurrency
        vt = self.config.visibility_timeout if visibility_timeout is None else visibility_timeout
        if not isinstance(vt, timedelta) or not timedelta(seconds=1) <= vt <= timedelta(days=7):
            raise ValidationError(
                f"visibility_timeout must be a timedelta from 1 s to 7 days, got {vt!r}"
            )
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
        # outcomes waiting to be recorded; ``None`` is a flusher's stop sentinel
        self._outcomes_q: asyncio.Queue[tuple[Transition, _Flight] | None] = asyncio.Queue()
        self._room = asyncio.Event()
        self._wake = asyncio.Event()
        self._stop_event = asyncio.Event()
        self._deadline: float | None = None  # monotonic time by which handlers must end
        self._deadline_moved = asyncio.Event()
        self._running = False
        self._finished = asyncio.Event()
        #: set once the worker is connected and listening for new messages
        self.ready = asyncio.Event()
        self._stopping = False
        retry_for = reconnect_timeout.total_seconds()
        # The reader only moves messages' visibility forward. If the server crashed
        # before a read's commit reached disk, those messages would just become
        # visible again early: a redelivery, which the version-checked outcome
        # already handles. So reads skip the WAL flush wait; outcomes never do.
        # A stop request ends the reader's reconnect attempts at once.
        self._reader = ResilientConnection(
            url,
            what=f"worker {domain} reader",
            retry_for=retry_for,
            setup=("SET synchronous_commit = off",),
            give_up=self._stop_event,
        )
        self._flushers = [
            ResilientConnection(url, what=f"worker {domain} flusher", retry_for=retry_for)
            for _ in range(flushers)
        ]
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._task: asyncio.Task[WorkerStats] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._flush_tasks: list[asyncio.Task[None]] = []

    # -- public lifecycle -------------------------------------------------------------------

    def request_stop(self, timeout: timedelta | float | None = None) -> None:
        """Ask the worker to stop (safe from signal handlers, idempotent).

        Running handlers get ``timeout`` (default 30 s) from now to finish; a
        later call with a shorter ``timeout`` cuts the wait short, even while it
        is under way (``0``: cancel them now).
        """
        grace = DEFAULT_GRACE if timeout is None else _seconds(timeout, "timeout")
        deadline = time.monotonic() + grace
        if self._deadline is None or deadline < self._deadline:
            self._deadline = deadline
            self._deadline_moved.set()
        self._stop_event.set()
        self._wake.set()
        self._room.set()

    async def stop(self, timeout: timedelta | float = DEFAULT_GRACE) -> None:  # noqa: ASYNC109
        """Stop gracefully and wait for it: in-flight handlers get ``timeout`` to finish.

        Idempotent, and callable before :meth:`run` (which then returns at once).
        The whole stop takes at most ``timeout`` plus about a second (recording
        what finished and handing back the rest), whatever the database does.
        """
        self.request_stop(timeout)
        if self._running:
            await self._finished.wait()

    async def __aenter__(self) -> Worker:
        """``async with Worker(...) as w:`` runs the worker in a task until the block ends."""
        self._task = asyncio.create_task(self.run(), name=f"commandbus-worker-{self.domain}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self.request_stop()
        await task

    async def run(self) -> WorkerStats:
        """Run until :meth:`stop` (or a signal, via the CLI); returns the stats.

        Cancelling the task that runs it stops the worker at once (handlers are
        cancelled, what finished is recorded, the rest handed back to the queue),
        and then re-raises the cancellation. Every task it started has ended by
        the time it returns or raises.
        """
        if self._running:
            raise RuntimeError("this worker is already running")
        if self._stop_event.is_set():
            self.stats.stopped_at = time.monotonic()
            return self.stats
        self._running = True
        self.stats.started_at = time.monotonic()
        # Every runner may hold a handler transaction; two more connections are
        # always there for ``extend_visibility`` and quarantines, so a handler
        # holding one never waits on another that cannot come.
        self._pool = AsyncConnectionPool(
            self._url,
            min_size=0,
            max_size=self.concurrency + 2,
            kwargs={"autocommit": True},
            check=AsyncConnectionPool.check_connection,
            open=False,
        )
        cancelled = False
        try:
            await self._pool.open()
            try:
                await self._start()
                await self._supervise()
            except asyncio.CancelledError:
                cancelled = True
                raise
            finally:
                cancelled = await self._stop_everything() or cancelled
        finally:
            await self._close()
            self._running = False
            self._finished.set()
            self.stats.stopped_at = time.monotonic()
            log.info("%s", self.stats.summary())
        if cancelled:
            raise asyncio.CancelledError()
        return self.stats

    # -- supervision ------------------------------------------------------------------------

    async def _start(self) -> None:
        from commandbus.migrations import ensure_schema_current

        # an unmigrated database is a SchemaNotReadyError now, not a crash later
        await self._reader.run(ensure_schema_current)
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

    async def _supervise(self) -> None:
        """Run the side tasks until a stop is requested or one of them fails."""
        d = self.domain
        self._tasks = [
            asyncio.create_task(self._read_loop(), name=f"commandbus-reader-{d}"),
            asyncio.create_task(self._listen_loop(), name=f"commandbus-listener-{d}"),
        ]
        self._flush_tasks = [
            asyncio.create_task(self._flush_loop(i), name=f"commandbus-flusher-{d}-{i}")
            for i in range(len(self._flushers))
        ]
        stopper = asyncio.create_task(self._stop_event.wait(), name=f"commandbus-stop-{d}")
        try:
            done, _ = await asyncio.wait(
                {stopper, *self._tasks, *self._flush_tasks}, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stopper.cancel()
        for task in done - {stopper}:
            if task.cancelled():
                raise CommandBusError(f"worker {d}: task {task.get_name()} was cancelled")
            exc = task.exception()
            if exc is not None and not self._stop_event.is_set():
                log.error("worker task %s died; stopping", task.get_name())
                self.request_stop(0)
                raise exc

    async def _stop_everything(self) -> bool:
        """Staged stop: reading ends, handlers finish (or are cancelled), outcomes are recorded.

        Returns whether the calling task was cancelled meanwhile (a second
        cancellation only hurries the stop along: it still ends every task).
        """
        cancelled = False
        if self._deadline is None or not self._stop_event.is_set():
            self.request_stop(0)  # cancelled, or a task died: stop now
        self._stopping = True
        self._wake.set()
        self._room.set()
        tasks, flushers = self._tasks, self._flush_tasks
        while True:
            try:
                # 1. nothing new is read; reconnect attempts have given up
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                # 2. running handlers get until the deadline
                await self._until_deadline(lambda: [t for t in self._runners if not t.done()])
                await self._cancel_all(self._runners, "handler")
                # 3. flushers record what finished, then end on their sentinel
                for _ in flushers:
                    self._outcomes_q.put_nowait(None)
                if flushers:
                    grace = max(0.0, (self._deadline or 0) - time.monotonic())
                    _, late = await asyncio.wait(flushers, timeout=grace + FINAL_SECONDS)
                    if late:
                        log.warning(
                            "could not record %d outcomes in time; their messages come back",
                            self._outcomes_q.qsize(),
                        )
                    await self._cancel_all(late, "flusher")
                for task in flushers:
                    if not task.cancelled() and task.exception() is not None:
                        log.error("flusher failed: %r", task.exception())
                return cancelled
            except asyncio.CancelledError:
                cancelled = True
                self.request_stop(0)

    async def _until_deadline(self, pending: Callable[[], list[asyncio.Task[None]]]) -> None:
        """Wait for ``pending()`` tasks to end, until the (shrinkable) stop deadline."""
        while running := pending():
            left = (self._deadline or 0) - time.monotonic()
            if left <= 0:
                return
            self._deadline_moved.clear()
            moved = asyncio.create_task(
                self._deadline_moved.wait(), name=f"commandbus-deadline-{self.domain}"
            )
            try:
                await asyncio.wait(
                    [*running, moved], timeout=left, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                moved.cancel()
                await asyncio.gather(moved, return_exceptions=True)

    @staticmethod
    async def _cancel_all(tasks: Iterable[asyncio.Task[None]], what: str) -> None:
        late = [t for t in tasks if not t.done()]
        for task in late:
            task.cancel()
        if late:
            _, stuck = await asyncio.wait(late, timeout=FINAL_SECONDS)
            for task in stuck:  # it swallowed its cancellation
                log.error("%s task %s ignores cancellation; abandoning it", what, task.get_name())

    async def _close(self) -> None:
        """Make every message still held visible again, then close connections."""
        left = list(self._flights.values())
        if left:
            unstarted = [f.msg.msg_id for f in left if not f.started]
            started = [f.msg.msg_id for f in left if f.started]
            try:
                # one try, bounded: the messages come back after vt anyway
                async with asyncio.timeout(FINAL_SECONDS):
                    conn = await connect(self._url)
                    async with conn:
                        await command_store.release(conn, self.domain, started, unstarted)
                self.stats.released += len(left)
            except (TimeoutError, psycopg.Error) as exc:
                log.warning(
                    "could not release %d messages (%s); they reappear after vt", len(left), exc
                )
            self._flights.clear()
        for held in (self._reader, *self._flushers):
            with contextlib.suppress(Exception):
                await held.close()
        if self._pool is not None:
            await self._pool.close()

    # -- connections ------------------------------------------------------------------------

    async def _retrying(self, fn: Callable[[], Awaitable[T]]) -> T:
        return await retrying(
            fn,
            retry_for=self._reconnect_timeout,
            what=f"worker {self.domain}",
            give_up=self._stop_event,
        )

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
                if self._stop_event.is_set():
                    return
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
                # back after its visibility timeout (and counts as a delivery)
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
        attempt = _Attempt(
            command=command,
            number=msg.read_ct,
            version=int(msg.version),
            msg_id=msg.msg_id,
            recorded=int(msg.attempts or 0),
            prefix=self._outcomes.lost_attempts(command, msg.read_ct, int(msg.attempts or 0)),
        )
        transition, ctx = await self._attempt(attempt)
        if ctx is not None and ctx.transaction is not None:
            await self._record_with_handler_tx(flight, attempt, transition, ctx)
        else:
            self._outcomes_q.put_nowait((transition, flight))

    def _failure(self, a: _Attempt, exc: BaseException, kind: str | None = None) -> Transition:
        outcome, t = self._outcomes.failure(
            a.command,
            exc,
            attempt=a.number,
            version=a.version,
            msg_id=a.msg_id,
            prefix=a.prefix,
            kind=kind,
        )
        log.log(
            logging.INFO if outcome == "retried" else logging.WARNING,
            "command %s attempt %d: %s (%s)",
            a.command.command_type,
            a.number,
            outcome,
            exc,
        )
        return t

    async def _attempt(self, a: _Attempt) -> tuple[Transition, HandlerContext | None]:
        command = a.command
        if a.number > command.max_attempts:
            # Deliveries that never recorded an outcome (a crash, a hang past the
            # vt) used the attempts up: the handler does not run again.
            return self._outcomes.deliveries_exhausted(
                command,
                deliveries=a.number,
                version=a.version,
                msg_id=a.msg_id,
                recorded=a.recorded,
            ), None
        handler = self.registry.get(self.domain, command.command_type)
        if handler is None:
            exc = UnknownCommandTypeError(
                f"no handler for command type {command.command_type!r} in domain {self.domain!r}"
            )
            return self._failure(a, exc, "unknown_command_type"), None
        assert self._pool is not None
        ctx = HandlerContext(command=command, attempt=a.number, msg_id=a.msg_id, pool=self._pool)
        tok_c = correlation_id_var.set(command.correlation_id)
        tok_i = command_id_var.set(command.command_id)
        try:
            try:
                result = await handler(command, ctx)
                if result is not None and not isinstance(result, int | bool):
                    dumps(result, what="handler result")  # refuse it here, not in the flush
            except PayloadError as exc:
                raise PermanentCommandError(str(exc)) from exc
            success = self._outcomes.success(
                command,
                result,
                attempt=a.number,
                version=a.version,
                msg_id=a.msg_id,
                prefix=a.prefix,
            )
            return success, ctx
        except asyncio.CancelledError as exc:
            await ctx.finish(commit=False)
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the worker is stopping: this delivery is handed back
            # a cancellation raised inside the handler (an inner task was
            # cancelled): an ordinary failed attempt
            return self._failure(a, exc), None
        except Exception as exc:
            await ctx.finish(commit=False)
            return self._failure(a, exc), None
        finally:
            correlation_id_var.reset(tok_c)
            command_id_var.reset(tok_i)

    async def _record_with_handler_tx(
        self, flight: _Flight, a: _Attempt, transition: Transition, ctx: HandlerContext
    ) -> None:
        """Record the outcome in the handler's transaction and commit both, or neither."""
        conn = ctx.transaction
        assert conn is not None
        if conn.info.transaction_status == TransactionStatus.INERROR:
            # The handler caught a failed statement and went on: its transaction is
            # aborted, so nothing it wrote can commit. A failed attempt.
            await ctx.finish(commit=False)
            exc = TransientCommandError(
                "the handler's transaction was aborted by a statement that failed "
                "(the handler caught the error); its writes were rolled back"
            )
            self._outcomes_q.put_nowait((self._failure(a, exc), flight))
            return
        lost = (psycopg.OperationalError, DatabaseUnavailableError, asyncio.CancelledError)
        try:
            ok = await command_store.record_transitions(conn, [transition])
        except lost:
            with contextlib.suppress(psycopg.Error):
                await ctx.finish(commit=False)
            self._forget(flight)  # comes back after the vt, as a counted delivery
            raise
        except (psycopg.Error, PayloadError) as exc:
            # the outcome itself cannot be stored (say its reply queue is gone)
            with contextlib.suppress(psycopg.Error):
                await ctx.finish(commit=False)
            log.error("outcome of command %s could not be recorded: %s", a.command.command_id, exc)
            self._outcomes_q.put_nowait((self._outcomes.unrecordable(transition, exc), flight))
            return
        try:
            await ctx.finish(commit=bool(ok))
        except lost:
            self._forget(flight)
            raise
        except psycopg.Error as exc:
            # the handler's own writes failed at COMMIT (a deferred constraint,
            # say), so the outcome was not recorded either: a failed attempt
            self._outcomes_q.put_nowait((self._failure(a, exc), flight))
            return
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
        """Record queued outcomes, a group at a time, until this flusher's stop sentinel."""
        queue = self._outcomes_q
        while True:
            item = await queue.get()
            if item is None:
                return
            group = [item]
            last = False
            while not queue.empty():
                more = queue.get_nowait()
                if more is None:  # one sentinel per flusher: take only our own
                    last = True
                    break
                group.append(more)
            await self._flush(i, group)
            if last:
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
