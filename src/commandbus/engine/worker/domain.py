"""One domain of a worker: what a command means to the queue consumer serving it.

The reading, running, grouped recording and staged stop are the shared
:class:`~commandbus.engine.queues.consumer.QueueConsumer`'s; this module decodes a
message, runs its handler with a context, turns what happened into the
command's next transition (events, projection, queue action, reply) and records
transitions in groups, ONE statement each. A :class:`~commandbus.engine.worker.worker.Worker`
runs one of these per domain, all sharing its handler connection pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

import attrs
import psycopg
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool

from commandbus import event_types as ev
from commandbus.codec import dumps_limited
from commandbus.engine.commands import recording
from commandbus.engine.commands import store as command_store
from commandbus.engine.commands.envelope import decode_command
from commandbus.engine.commands.store import ReadMessage
from commandbus.engine.db.connect import Conn, ResilientConnection, is_transient, is_unavailable
from commandbus.engine.eventstore import store as event_store
from commandbus.engine.eventstore.store import StreamAppend
from commandbus.engine.observability import tracing
from commandbus.engine.observability.logging import command_id_var, correlation_id_var
from commandbus.engine.queues import sql as queue_sql
from commandbus.engine.queues.consumer import QueueConsumer
from commandbus.engine.queues.tables import (
    QueueRegistry,
    wakeup_channel,
    wakeup_throttle_ms,
    with_queue,
)
from commandbus.engine.worker import handoff
from commandbus.engine.worker.context import HandlerContext
from commandbus.engine.worker.failures import ErrorKind, decisive, error_info
from commandbus.engine.worker.inline import InlineReplies
from commandbus.engine.worker.outcomes import Decision, Outcome, OutcomeBuilder
from commandbus.engine.worker.recorder import Recorder
from commandbus.engine.worker.registry import HandlerRegistry
from commandbus.engine.worker.stats import WorkerStats
from commandbus.errors import (
    PayloadError,
    PermanentCommandError,
    TransientCommandError,
    UnknownCommandTypeError,
)
from commandbus.models import Command, ErrorInfo, NewEvent
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


@attrs.frozen(kw_only=True)
class DomainSettings:
    """What every domain of one worker shares."""

    url: str
    registry: HandlerRegistry
    outcomes: OutcomeBuilder
    vt_seconds: float
    concurrency: int
    batch_size: int
    flushers: int
    poll_interval: float
    reconnect_timeout: float
    #: the worker's handler pool (opened when the worker runs)
    pool: Callable[[], AsyncConnectionPool[Conn]]
    #: the largest handler result recorded (MAX_PAYLOAD_BYTES, as for command data):
    #: a result goes into the command's events, its reply and its saga's state
    max_result_bytes: int
    #: stops the whole worker (every domain), for a handler that ends the process
    stop_worker: Callable[[], None]
    #: replies acted on in the outcome's transaction (the sagas' transitions), if any
    inline: InlineReplies | None = None


class DomainConsumer:
    """Serves one domain's queue for a worker (a ConsumerApp of a QueueConsumer)."""

    def __init__(self, domain: str, settings: DomainSettings) -> None:
        self.domain = domain
        self.registry = settings.registry
        self.stats = WorkerStats(domain=domain)
        self._settings = settings
        self._vt = settings.vt_seconds
        self._outcomes = settings.outcomes
        self._recorder = Recorder(self.stats, settings.outcomes, settings.inline, settings.url)
        self.consumer: QueueConsumer[ReadMessage, Decision] = QueueConsumer(
            settings.url,
            self,
            name=domain,
            wakeup_channel=wakeup_channel(domain),
            concurrency=settings.concurrency,
            batch_size=settings.batch_size,
            flushers=settings.flushers,
            poll_interval=settings.poll_interval,
            reconnect_timeout=settings.reconnect_timeout,
            stop_all=settings.stop_worker,
        )

    async def opened(self) -> None:
        # a saga's next command sent to this domain by a worker of this process is
        # handed straight to this consumer (see handoff.py)
        handoff.serve(self._settings.url, self.domain, self)
        inline = self._settings.inline
        log.info(
            "worker connected for domain %s (%s) concurrency=%d vt=%.0fs%s",
            self.domain,
            ", ".join(self.registry.command_types(self.domain)),
            self._settings.concurrency,
            self._vt,
            "" if inline is None else f"; moves {inline.what} in its outcomes' transactions",
        )

    def closed(self) -> None:
        """Its consumer ended: nothing is handed to it any more."""
        handoff.unserve(self._settings.url, self.domain, self)

    # -- messages claimed for it (handoff.Serving) ------------------------------------------

    @property
    def vt_seconds(self) -> float:
        return self._vt

    def room(self) -> int:
        return self.consumer.room()

    def adopt(self, msgs: Sequence[ReadMessage]) -> int:
        taken = self.consumer.adopt(msgs)
        self.stats.handed_over += taken
        return taken

    # -- consumer hooks ---------------------------------------------------------------------

    async def prepare(self, conn: Conn) -> None:
        """An unmigrated database is a SchemaNotReadyError now, not a crash later."""
        from commandbus.migrations import ensure_schema_current

        await ensure_schema_current(conn)
        # a worker may start before anything was sent to its domain
        await QueueRegistry().ensure(conn, self.domain)
        if self._settings.inline is not None:
            await self._settings.inline.prepare(conn)
        throttle_ms = await wakeup_throttle_ms(conn, self.domain)
        if throttle_ms is not None:
            self.consumer.settle_seconds = (throttle_ms + 1) / 1000

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
        # every record logged while this command is handled carries its ids
        tok_c = correlation_id_var.set(command.correlation_id)
        tok_i = command_id_var.set(command.command_id)
        try:
            return await self._handle(command, msg)
        finally:
            correlation_id_var.reset(tok_c)
            command_id_var.reset(tok_i)

    async def _handle(self, command: Command, msg: ReadMessage) -> Decision | None:
        span = tracing.process(self.domain, command, attempt=msg.read_ct, msg_id=msg.msg_id)
        with span:  # current while the handler runs: what it sends is its child
            attempt = _Attempt(
                command=command,
                number=msg.read_ct,
                version=int(msg.version or 0),
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

    def _failure(
        self,
        a: _Attempt,
        exc: BaseException,
        kind: ErrorKind | None = None,
        err: ErrorInfo | None = None,
    ) -> Decision:
        """The decision for a failed attempt, logged: an unexpected error with its traceback."""
        kind = kind or decisive(exc)[0]
        err = err or error_info(exc)
        decision = self._outcomes.failure(
            a.command,
            exc,
            attempt=a.number,
            version=a.version,
            msg_id=a.msg_id,
            prefix=a.prefix,
            kind=kind,
            err=err,
        )
        a.span.outcome(decision.outcome.value, exc, kind.value)
        expected = err.traceback is None  # raised on purpose: no traceback needed
        if decision.outcome is Outcome.TROUBLESHOOTING:
            level = logging.WARNING if expected else logging.ERROR
        elif decision.outcome is Outcome.RETRIED and not expected:
            level = logging.WARNING
        else:
            level = logging.INFO
        log.log(
            level,
            "command %s %s attempt %d of %d %s (%s): %s: %s",
            a.command.command_type,
            a.command.command_id,
            a.number,
            a.command.max_attempts,
            decision.outcome,
            kind,
            err.type,
            err.message,
            exc_info=None if expected else exc,
        )
        return decision

    def _unknown_type(self, a: _Attempt) -> Decision:
        registered = ", ".join(self.registry.command_types(self.domain)) or "none"
        exc = UnknownCommandTypeError(
            f"no handler for command type {a.command.command_type!r} in domain "
            f"{self.domain!r} (registered: {registered})"
        )
        err = error_info(exc, with_traceback=False)
        return self._failure(a, exc, ErrorKind.UNKNOWN_COMMAND_TYPE, err)

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
            return self._unknown_type(a), None
        ctx = HandlerContext(
            command=command, attempt=a.number, msg_id=a.msg_id, pool=self._settings.pool()
        )
        try:
            try:
                result = await handler(command, ctx)
                if result is not None and not (
                    isinstance(result, int) and -(2**63) <= result < 2**63  # (bool too)
                ):
                    # refuse it here, not in the flush
                    dumps_limited(result, self._settings.max_result_bytes, what="handler result")
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
        except (KeyboardInterrupt, SystemExit):
            # the process is to end (the consumer stops everything gracefully, then
            # raises it): not this command's failure
            await ctx.finish(commit=False)
            raise
        except BaseException as exc:
            # whatever else the handler raised, a BaseException of its own too: this
            # attempt's failure, not the worker's (nothing else it holds may be lost,
            # and the message must not wait out its vt)
            await ctx.finish(commit=False)
            return self._failure(a, exc), None

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
            ok = await recording.record_transitions(conn, [decision.transition])
        except BaseException as exc:
            with contextlib.suppress(psycopg.Error):
                await ctx.finish(commit=False)
            if isinstance(exc, asyncio.CancelledError) or is_unavailable(exc):
                raise  # the message comes back after the vt, as a counted delivery
            if is_transient(exc):
                # a serialization failure, a deadlock, a lock timeout: try again
                return self._failure(a, exc, ErrorKind.TRANSIENT)
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
            return self._failure(a, exc, ErrorKind.TRANSIENT)
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
            async with self._settings.pool().connection() as conn:
                await op(conn)

        await self.consumer.retrying(pooled)
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
