"""The worker: serves one domain's commands with the handlers of a registry.

The reading, running, grouped recording and staged stop are the shared
:class:`~commandbus.engine.queues.consumer.QueueConsumer`'s; this module is what a
command means to it: decoding a message, running its handler with a context,
turning what happened into the command's next transition (events, projection,
queue action, reply) and recording transitions in groups, ONE statement each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from datetime import timedelta

import attrs
import psycopg
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool

from commandbus import event_types as ev
from commandbus.arguments import bool_arg, int_arg
from commandbus.codec import dumps
from commandbus.config import Config
from commandbus.engine.commands import store as command_store
from commandbus.engine.commands.envelope import decode_command
from commandbus.engine.commands.store import ReadMessage
from commandbus.engine.db.connect import Conn, ResilientConnection, is_transient, is_unavailable
from commandbus.engine.db.embedded import resolve_database_url
from commandbus.engine.eventstore import store as event_store
from commandbus.engine.eventstore.store import StreamAppend
from commandbus.engine.observability import tracing
from commandbus.engine.observability.logging import command_id_var, correlation_id_var
from commandbus.engine.queues import sql as queue_sql
from commandbus.engine.queues.consumer import QueueConsumer
from commandbus.engine.queues.stopping import DEFAULT_GRACE, FINAL_SECONDS
from commandbus.engine.queues.tables import (
    QueueRegistry,
    wakeup_channel,
    wakeup_throttle_ms,
    with_queue,
)
from commandbus.engine.worker.context import HandlerContext
from commandbus.engine.worker.outcomes import Decision, Outcome, OutcomeBuilder
from commandbus.engine.worker.recorder import Recorder
from commandbus.engine.worker.registry import HandlerRegistry
from commandbus.engine.worker.retry_policy import ErrorKind, RetryPolicy, classify
from commandbus.engine.worker.stats import WorkerStats
from commandbus.errors import (
    PayloadError,
    PermanentCommandError,
    TransientCommandError,
    UnknownCommandTypeError,
    ValidationError,
)
from commandbus.models import Command, NewEvent
from commandbus.names import quarantine_stream_id

log = logging.getLogger("commandbus.worker")


@attrs.frozen
class _Attempt:
    """One delivery of a command being handled: what its outcome is recorded against."""

    command: Command
    number: int  # the delivery count (PGMQ's read_ct)
    version: int  # the stream version the delivery was read at
    msg_id: int
    recorded: int  # attempts recorded so far
    prefix: list[NewEvent]  # CommandAttemptLost events for earlier, unrecorded deliveries
    span: tracing.ProcessSpan  # its CONSUMER span and metrics (a no-op when off)
    started_ns: int  # when its handling started (epoch nanoseconds)
    started_perf_ns: int  # the same, on the performance counter


class Worker:
    """Processes one domain's commands with the handlers of a registry."""

    def __init__(
        self,
        url: str | None,
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
        concurrency = int_arg(concurrency, "concurrency", low=1, high=10_000)
        flushers = int_arg(flushers, "flushers", low=1, high=16)
        batch_size = int_arg(batch_size, "batch_size", low=1, high=10_000)
        archive_completed = bool_arg(archive_completed, "archive_completed")
        if not isinstance(reconnect_timeout, timedelta) or reconnect_timeout < timedelta(0):
            raise ValidationError(
                f"reconnect_timeout must be a timedelta >= 0, got {reconnect_timeout!r}"
            )
        if url is not None and (not isinstance(url, str) or not url.strip()):
            raise ValidationError(f"url must be a connection string or None, got {url!r:.60}")
        if not isinstance(registry, HandlerRegistry):
            raise ValidationError(f"registry must be a HandlerRegistry, got {registry!r:.60}")
        if config is not None and not isinstance(config, Config):
            raise ValidationError(f"config must be a Config, got {config!r:.60}")
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
        # None: DATABASE_URL, else the embedded server (joined now, for the process)
        self._url = url = resolve_database_url(url, self.config)
        self._outcomes = OutcomeBuilder(
            RetryPolicy(self.config), archive_completed=archive_completed
        )
        self.stats = WorkerStats(domain=domain)
        # A worker holds up to two batches (the next is read while the last is
        # handled and recorded): keep 2 * batch_size * handler time / concurrency
        # well under the visibility timeout.
        self._recorder = Recorder(self.stats, self._outcomes)
        self._consumer: QueueConsumer[ReadMessage, Decision] = QueueConsumer(
            url,
            self,
            name=domain,
            wakeup_channel=wakeup_channel(domain),
            concurrency=concurrency,
            batch_size=batch_size,
            flushers=flushers,
            poll_interval=self.config.poll_interval.total_seconds(),
            reconnect_timeout=reconnect_timeout.total_seconds(),
        )
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._task: asyncio.Task[WorkerStats] | None = None

    # -- public lifecycle -------------------------------------------------------------------

    @property
    def ready(self) -> asyncio.Event:
        """Set once the worker is connected and listening for new messages."""
        return self._consumer.ready

    def request_stop(self, timeout: timedelta | float | None = None) -> None:
        """Ask the worker to stop (safe from signal handlers, idempotent).

        Running handlers get ``timeout`` (default 30 s) from now to finish; a
        later call with a shorter ``timeout`` cuts the wait short, even while it
        is under way (``0``: cancel them now).
        """
        self._consumer.request_stop(timeout)

    async def stop(self, timeout: timedelta | float = DEFAULT_GRACE) -> None:  # noqa: ASYNC109
        """Stop gracefully and wait for it: in-flight handlers get ``timeout`` to finish.

        Idempotent, and callable before :meth:`run` (which then returns at once).
        The whole stop takes at most ``timeout`` plus about a second (recording
        what finished and handing back the rest), whatever the database does.
        """
        await self._consumer.stop(timeout)

    async def __aenter__(self) -> Worker:
        """``async with Worker(...) as w:`` runs the worker in a task until the block ends.

        The block starts once the worker is connected and listening; a start-up
        failure (say :class:`~commandbus.errors.SchemaNotReadyError`) is raised here.
        """
        task = asyncio.create_task(self.run(), name=f"commandbus-worker-{self.domain}")
        self._task = task
        ready = asyncio.create_task(self.ready.wait(), name=f"commandbus-ready-{self.domain}")
        try:
            await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            self.request_stop(0)
            await asyncio.gather(task, return_exceptions=True)
            raise
        finally:
            ready.cancel()
            await asyncio.gather(ready, return_exceptions=True)
        if task.done():
            self._task = None
            task.result()  # raises what stopped it
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
        if self._consumer.running:
            raise RuntimeError("this worker is already running")
        self.stats.started_at = time.monotonic()
        if self._consumer.stop_requested:
            self.stats.stopped_at = time.monotonic()
            return self.stats
        tracing.configure_tracing_from_env(service_name=f"commandbus-worker-{self.domain}")
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
        try:
            await self._pool.open()
            await self._consumer.run(opened=self._opened)
        finally:
            await self._pool.close(timeout=FINAL_SECONDS)
            self.stats.released = self._consumer.released
            self.stats.stopped_at = time.monotonic()
        log.info("%s", self.stats.summary())  # a failed start says why instead
        return self.stats

    async def _opened(self) -> None:
        log.info(
            "worker serving domain %s (%s) concurrency=%d vt=%.0fs",
            self.domain,
            ", ".join(self.registry.command_types(self.domain)),
            self.concurrency,
            self._vt,
        )

    # -- consumer hooks ---------------------------------------------------------------------

    async def prepare(self, conn: Conn) -> None:
        """An unmigrated database is a SchemaNotReadyError now, not a crash later."""
        from commandbus.migrations import ensure_schema_current

        await ensure_schema_current(conn)
        # a worker may start before anything was sent to its domain
        await QueueRegistry().ensure(conn, self.domain)
        throttle_ms = await wakeup_throttle_ms(conn, self.domain)
        if throttle_ms is not None:
            self._consumer.settle_seconds = (throttle_ms + 1) / 1000

    async def read(self, conn: Conn, qty: int) -> Sequence[ReadMessage]:
        return await command_store.read_batch(conn, self.domain, qty=qty, vt_seconds=self._vt)

    async def next_visible(self, conn: Conn) -> float | None:
        return await command_store.seconds_until_next_visible(conn, self.domain)

    async def release(self, conn: Conn, started: list[int], unstarted: list[int]) -> None:
        await command_store.release(conn, self.domain, started, unstarted)

    def suspect(self, msg: ReadMessage) -> bool:
        """An earlier delivery ended with no outcome recorded (a crash, a vt overrun)."""
        return msg.version is not None and msg.read_ct > int(msg.attempts or 0) + 1

    async def postpone(self, conn: Conn, msg_ids: list[int], seconds: float) -> None:
        await conn.execute(
            with_queue(queue_sql.POSTPONE, self.domain), {"msg_ids": msg_ids, "delay": seconds}
        )

    async def record(
        self, flusher: ResilientConnection, group: list[tuple[Decision, ReadMessage]]
    ) -> None:
        await self._recorder.record(flusher, [d for d, _msg in group])

    async def handle(self, msg: ReadMessage) -> Decision | None:
        """Run one delivery; its decision to record in a group, or ``None`` if done."""
        try:
            command = decode_command(self.domain, msg.message, msg.headers)
        except (KeyError, TypeError, ValueError) as exc:
            await self._quarantine(msg, f"undecodable message: {exc!r}")
            return None
        if msg.version is None:
            await self._quarantine(
                msg, f"no command {command.command_id} was sent in domain {self.domain}"
            )
            return None
        span = tracing.process(self.domain, command, attempt=msg.read_ct, msg_id=msg.msg_id)
        with span:  # current while the handler runs: what it sends is its child
            attempt = _Attempt(
                command=command,
                number=msg.read_ct,
                version=int(msg.version),
                msg_id=msg.msg_id,
                recorded=int(msg.attempts or 0),
                prefix=self._outcomes.lost_attempts(command, msg.read_ct, int(msg.attempts or 0)),
                span=span,
                started_ns=time.time_ns(),
                started_perf_ns=time.perf_counter_ns(),
            )
            decision: Decision | None
            decision, ctx = await self._attempt(attempt)
            if ctx is not None and ctx.transaction is not None:
                decision = await self._record_with_handler_tx(attempt, decision, ctx)
            if decision is not None:
                _annotate(attempt, decision)
            return decision

    def _failure(self, a: _Attempt, exc: BaseException, kind: ErrorKind | None = None) -> Decision:
        kind = kind or classify(exc)
        decision = self._outcomes.failure(
            a.command,
            exc,
            attempt=a.number,
            version=a.version,
            msg_id=a.msg_id,
            prefix=a.prefix,
            kind=kind,
        )
        a.span.outcome(decision.outcome.value, exc, kind.value)
        log.log(
            logging.INFO if decision.outcome is Outcome.RETRIED else logging.WARNING,
            "command %s attempt %d: %s (%s)",
            a.command.command_type,
            a.number,
            decision.outcome,
            exc,
        )
        return decision

    async def _attempt(self, a: _Attempt) -> tuple[Decision, HandlerContext | None]:
        command = a.command
        if a.number > command.max_attempts:
            # Deliveries that never recorded an outcome (a crash, a hang past the
            # vt) used the attempts up: the handler does not run again.
            a.span.outcome(Outcome.TROUBLESHOOTING.value, kind="attempts_exhausted")
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
            return self._failure(a, exc, ErrorKind.UNKNOWN_COMMAND_TYPE), None
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
            a.span.outcome(Outcome.COMPLETED.value)
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
        self, a: _Attempt, decision: Decision, ctx: HandlerContext
    ) -> Decision | None:
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
            return self._failure(a, exc)
        _annotate(a, decision)
        try:
            ok = await command_store.record_transitions(conn, [decision.transition])
        except BaseException as exc:
            with contextlib.suppress(psycopg.Error):
                await ctx.finish(commit=False)
            if isinstance(exc, asyncio.CancelledError) or is_unavailable(exc):
                raise  # the message comes back after the vt, as a counted delivery
            if is_transient(exc):
                # a serialization failure, a deadlock, a lock timeout: try again
                return self._failure(a, exc)
            if not isinstance(exc, psycopg.Error | PayloadError):
                raise
            # the outcome itself cannot be stored (say its reply queue is gone)
            log.error("outcome of command %s could not be recorded: %s", a.command.command_id, exc)
            a.span.outcome(Outcome.TROUBLESHOOTING.value, exc, "unrecordable_outcome")
            return self._outcomes.unrecordable(decision.transition, exc)
        try:
            await ctx.finish(commit=bool(ok))
        except psycopg.Error as exc:
            if is_unavailable(exc):
                raise  # whether it committed is unknown: the version check decides
            # the handler's own writes failed at COMMIT (a deferred constraint, a
            # serialization failure), so the outcome was not recorded: a failed attempt
            return self._failure(a, exc)
        self._recorder.count(decision, recorded=bool(ok))
        return None

    async def _quarantine(self, msg: ReadMessage, reason: str) -> None:
        """Set a poison message aside (archived) with an event saying why."""
        log.error("quarantining message %s of queue %s: %s", msg.msg_id, self.domain, reason)

        async def op(conn: Conn) -> None:
            async with conn.transaction():
                await event_store.append(
                    conn,
                    [
                        StreamAppend(
                            stream_id=quarantine_stream_id(self.domain, msg.msg_id),
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

        await self._consumer.retrying(pooled)
        self.stats.quarantined += 1


def _annotate(a: _Attempt, decision: Decision) -> None:
    """Put the attempt's timing and trace context in its outcome event's metadata.

    ``timing.started_us`` (epoch microseconds, the worker's clock) and
    ``timing.duration_us`` say when the handling started and how long it took
    (what the audit waterfall draws; integers, which cost less to write than
    floats); ``trace`` is the W3C context of its ``process`` span when one records.
    """
    # the event was built for this delivery alone: its metadata is no one else's
    meta = decision.transition.events[-1].metadata
    meta["timing"] = {
        "started_us": a.started_ns // 1000,
        "duration_us": (time.perf_counter_ns() - a.started_perf_ns) // 1000,
    }
    headers = a.span.headers()
    if headers:
        meta["trace"] = headers
