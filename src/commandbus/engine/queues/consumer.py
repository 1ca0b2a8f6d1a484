"""A queue consumer: one batched reader, bounded runners, grouped recording, staged stop.

The worker (commands) and the saga coordinator (replies) are both consumers of a
PGMQ queue; this module is the part they share, so neither copies the other.

Shape of a running consumer (every task is named and owned):

* ``reader``: reads batches into a bounded in-flight set; when the queue is
  empty it sleeps until a wake-up NOTIFY, the next delayed message, or the poll
  interval, whichever comes first.
* runner tasks, at most ``concurrency`` at once (:mod:`.runners`): each takes
  messages from the in-memory backlog one after the other and calls ``handle``;
  what it returns (an outcome) is queued for recording, ``None`` means the
  message is done.
* ``flusher`` tasks (each with its own connection): each takes every outcome
  queued so far and hands the group to ``record`` (:mod:`.flushing`).
* ``listener``: LISTENs for the queue's wake-up channel.
* ``heartbeat``: keeps the consumer's row in ``commandbus.heartbeat`` fresh, through a
  stop's drain too; it never stops the consumer (:mod:`.heartbeat`).

Stopping is staged: reading ends (reconnect attempts give up at once), running
handlers get until the deadline and are then cancelled, every flusher records
what finished and ends on its own sentinel, every message still held is made
visible again and the heartbeat is marked stopped. Cancelling
:meth:`QueueConsumer.run` is a stop with no grace that is awaited, then re-raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Hashable, Sequence
from datetime import timedelta
from typing import Generic, TypeVar

from commandbus.arguments import delay_arg
from commandbus.engine.db.connect import Conn, ResilientConnection, retrying
from commandbus.engine.queues.app import ConsumerApp, M, O
from commandbus.engine.queues.flushing import Flight, Flushers
from commandbus.engine.queues.heartbeat import Heartbeat
from commandbus.engine.queues.listener import Listener
from commandbus.engine.queues.runners import Runners
from commandbus.engine.queues.stopping import (
    DEFAULT_GRACE,
    FINAL_SECONDS,
    Deadline,
    end_tasks,
    last_writes,
)
from commandbus.engine.queues.tables import queue_of_channel
from commandbus.errors import CommandBusError

log = logging.getLogger("commandbus.consumer")
T = TypeVar("T")

#: Suspects (messages an earlier delivery of which ended without an outcome, e.g.
#: because their handler crashed the process) run alone; the others read with one
#: are handed back, unread, for this long.
POSTPONE_SECONDS = 0.25
#: Senders notify at most once per queue per throttle interval (2 ms unless set
#: otherwise; decided at their commit), so a message committed just after
#: another's NOTIFY may have none of its own: a read that a NOTIFY woke is
#: followed by one more, an interval (plus a millisecond) later.
SETTLE_SECONDS = 0.003
#: A reader about to sleep longer than this first asks when the next delayed
#: message is due; before a shorter sleep it does not.
SHORT_WAIT_SECONDS = 0.01

#: How long a stop lets a read under way finish (the reader then registers what it
#: took, and the stop hands it back) before it cancels it.
READ_GRACE_SECONDS = 0.5


class QueueConsumer(Generic[M, O]):
    """Consumes one queue for a :class:`ConsumerApp`; see the module docstring."""

    def __init__(
        self,
        url: str,
        app: ConsumerApp[M, O],
        *,
        name: str,
        wakeup_channel: str,
        concurrency: int,
        batch_size: int,
        flushers: int,
        poll_interval: float,
        reconnect_timeout: float,
        heartbeat_interval: float | None = None,
        stop_all: Callable[[], None] | None = None,
        order_key: Callable[[O], Hashable] | None = None,
    ) -> None:
        """``heartbeat_interval``: seconds between beats (default: ``HEARTBEAT_SECONDS``, 10)."""
        self._url = url
        self._app = app
        self.name = name
        self.concurrency = concurrency
        self._batch_size = batch_size
        self._poll = poll_interval
        self._reconnect_timeout = reconnect_timeout
        # Messages held at once (read, running or waiting to be recorded), and the
        # room there must be before the next read: reading a handful at a time
        # would cost a round trip per handful. Up to two batches: the next one is
        # read while the last is handled and recorded.
        self._capacity = max(2 * batch_size, concurrency + batch_size)
        self._read_threshold = max(1, min(batch_size, self._capacity // 2))

        self._runs: Runners[M, O] = Runners(
            name, concurrency, app.handle, done=self._handled, ending=self._ending
        )
        self._reading = 0  # messages a read under way may take
        self._flights: dict[int, Flight[M]] = {}
        self._room = asyncio.Event()
        self._wake = asyncio.Event()
        #: seconds after a NOTIFY-woken read to look once more (the app may set it)
        self.settle_seconds = SETTLE_SECONDS
        self._stop_event = asyncio.Event()
        self._heartbeat = Heartbeat(
            url,
            queue=queue_of_channel(wakeup_channel) or name,
            concurrency=concurrency,
            interval=heartbeat_interval,
            what=name,
            give_up=self._stop_event,
        )
        self._deadline = Deadline()  # by when running handlers must end
        self._stopping = False
        self._isolating = False  # a suspect is to run alone
        self._running = False
        self._finished = asyncio.Event()
        #: set once the consumer is connected and listening for new messages
        self.ready = asyncio.Event()
        #: reading starts once this is set: ``ready``, unless whoever runs several
        #: consumers as one gives them a readiness of its own
        self.reads_after = self.ready
        #: messages made visible again by a stop
        self.released = 0
        #: what a handler raised to end the process (SystemExit, KeyboardInterrupt),
        #: for the owner to raise once everything stopped (see :meth:`_run_backlog`)
        self.exit: SystemExit | KeyboardInterrupt | None = None
        # stops whatever runs this consumer (the whole worker), else this consumer
        self._stop_all = stop_all or self.request_stop
        # The reader only moves messages' visibility forward. If the server crashed
        # before a read's commit reached disk, those messages would just become
        # visible again early: a redelivery, which a version-checked outcome
        # handles. So reads skip the WAL flush wait; outcomes never do.
        self._reader = ResilientConnection(
            url,
            what=f"{name} reader",
            retry_for=reconnect_timeout,
            setup=("SET synchronous_commit = off",),
            give_up=self._stop_event,
        )
        self._flushing: Flushers[M, O] = Flushers(
            url,
            app,
            name=name,
            count=flushers,
            reconnect_timeout=reconnect_timeout,
            order_key=order_key,
            done=self._forget,
            ending=self._ending,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._idle = asyncio.Event()  # set whenever nothing is in flight
        self._listener = Listener(
            url,
            wakeup_channel,
            what=name,
            wake=self._wake,
            ready=self.ready,
            stop=self._stop_event,
            retrying=self.retrying,
        )

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._running

    @property
    def stop_requested(self) -> bool:
        return self._stop_event.is_set()

    def request_stop(self, timeout: timedelta | float | None = None) -> None:
        """Ask for a stop (safe from signal handlers, idempotent); see :meth:`stop`."""
        grace = DEFAULT_GRACE if timeout is None else delay_arg(timeout, "timeout")
        self._deadline.shorten(grace)
        self._stop_event.set()
        self._wake.set()
        self._room.set()
        self._idle.set()

    async def stop(self, timeout: timedelta | float = DEFAULT_GRACE) -> None:  # noqa: ASYNC109
        """Stop and wait: running handlers get ``timeout``, the rest about a second."""
        self.request_stop(timeout)
        if self._running:
            await self._finished.wait()

    async def run(self, *, opened: Callable[[], Awaitable[None]] | None = None) -> None:
        """Consume until a stop; ``opened`` runs once connected, before reading starts."""
        if self._running:
            raise RuntimeError(f"{self.name} is already running")
        if self._stop_event.is_set():
            return
        self._running = True
        cancelled = False
        try:
            try:
                if not await self._start():
                    return  # stopped while connecting: nothing was read
                if opened is not None:
                    await opened()
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
        if cancelled:
            raise asyncio.CancelledError()

    async def _start(self) -> bool:
        """Connect and prepare; False if a stop came first (a hung connect included)."""

        async def connect_all() -> None:
            await self._reader.run(self._app.prepare)
            await self._flushing.open()

        start = asyncio.create_task(connect_all(), name=f"commandbus-start-{self.name}")
        stopper = asyncio.create_task(self._stop_event.wait(), name=f"commandbus-stop-{self.name}")
        try:
            await asyncio.wait({start, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not start.done():
                held = [self._reader, *self._flushing.connections]
                await end_tasks([start], f"{self.name} start", held)
        if start.cancelled() or (self._stop_event.is_set() and start.exception() is not None):
            if not start.cancelled():
                start.exception()  # retrieved: a stop's doing
            return False
        start.result()  # a start-up error (say SchemaNotReadyError) is raised here
        return True

    async def _supervise(self) -> None:
        """Run the side tasks until a stop is requested or one of them fails."""
        n = self.name
        self._tasks = [
            asyncio.create_task(self._read_loop(), name=f"commandbus-reader-{n}"),
            asyncio.create_task(self._listener.run(), name=f"commandbus-listener-{n}"),
        ]
        flushing = self._flushing.start()
        # not among the reader's tasks: it beats on while a stop drains the handlers
        beat = self._heartbeat.start()
        stopper = asyncio.create_task(self._stop_event.wait(), name=f"commandbus-stop-{n}")
        try:
            done, _ = await asyncio.wait(
                {stopper, beat, *self._tasks, *flushing},
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            stopper.cancel()
        for task in done - {stopper}:
            if task.cancelled():
                raise CommandBusError(f"{n}: task {task.get_name()} was cancelled")
            exc = task.exception()
            if exc is not None and not self._stop_event.is_set():
                log.error("%s: task %s died; stopping", n, task.get_name())
                self.request_stop(0)
                if isinstance(exc, CommandBusError):
                    raise exc
                raise CommandBusError(f"{n}: task {task.get_name()} died: {exc!r}") from exc

    async def _stop_everything(self) -> bool:
        """Staged stop: reading ends, handlers finish (or are cancelled), outcomes are recorded.

        Returns whether the calling task was cancelled meanwhile (a second
        cancellation only hurries the stop along: it still ends every task).
        """
        cancelled = False
        if not self._stop_event.is_set():
            self.request_stop(0)  # cancelled, or a task died: stop now
        self._stopping = self._runs.stopping = True
        while True:
            try:
                # 1. nothing new is read; reconnect attempts have given up (a
                #    statement hung on a silent server is cut off with its connection).
                #    A read under way may finish first: cancelled mid-statement, the
                #    messages it took would stay invisible until their vt
                reading = [t for t in self._tasks[:1] if not t.done()]
                if reading:
                    await asyncio.wait(reading, timeout=READ_GRACE_SECONDS)
                listening = [] if self._listener.conn is None else [self._listener.conn]
                await end_tasks(self._tasks, f"{self.name} reader", [self._reader, *listening])
                # 2. running handlers get until the deadline
                await self._deadline.wait(
                    lambda: [t for t in self._runs.tasks if not t.done()], self.name
                )
                await end_tasks(self._runs.tasks, f"{self.name} handler", ())
                # 3. flushers record what finished, then end on their sentinel
                await self._flushing.stop(self._deadline.left() + FINAL_SECONDS)
                return cancelled
            except asyncio.CancelledError:
                cancelled = True
                self.request_stop(0)

    async def _close(self) -> None:
        """End the heartbeat; make every message still held visible again and mark the
        heartbeat stopped (one bounded try for both); then close connections."""
        left = list(self._flights.values())
        self._flights.clear()
        started = [f.msg.msg_id for f in left if f.started]
        unstarted = [f.msg.msg_id for f in left if not f.started]
        released, _ = await asyncio.gather(
            last_writes(
                self._url,
                self.name,
                release=functools.partial(self._app.release, started=started, unstarted=unstarted)
                if left
                else None,
                held=len(left),
                stopped=self._heartbeat.mark_stopped if self._heartbeat.started else None,
            ),
            self._heartbeat.end(),
        )
        if released:
            self.released += len(left)
        for held in (self._reader, *self._flushing.connections):
            with contextlib.suppress(Exception):
                await held.close()

    # -- messages taken elsewhere (claimed for it as they were sent) ------------------------

    def room(self) -> int:
        """How many more messages it would take now (none while stopping or isolating)."""
        if not self._running or self._stop_event.is_set() or self._isolating:
            return 0
        return max(0, self._capacity - len(self._flights) - self._reading)

    def adopt(self, msgs: Sequence[M]) -> int:
        """Take as many of ``msgs`` as :meth:`room` allows, as if read; how many (the first)."""
        taken = msgs[: self.room()]
        for m in taken:
            self._dispatch(m)
        self._runs.start()
        return len(taken)

    # -- connections ------------------------------------------------------------------------

    async def retrying(self, fn: Callable[[], Awaitable[T]]) -> T:
        """``await fn()``, retried on lost connections until a stop is requested."""
        return await retrying(
            fn, retry_for=self._reconnect_timeout, what=self.name, give_up=self._stop_event
        )

    # -- reading ----------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        app = self._app
        await self._listener.gate(self.reads_after, poll=self._poll)
        while not self._stopping and not self._stop_event.is_set():
            room = self._capacity - len(self._flights)
            if room < self._read_threshold and self._flights:
                self._room.clear()
                await self._room.wait()
                continue
            qty = min(self._batch_size, room)
            self._wake.clear()
            notified, self._listener.notified = self._listener.notified, False
            self._reading = qty  # room() keeps it free for the read
            try:
                msgs = await self._reader.run(functools.partial(_read, app, qty=qty))
            finally:
                self._reading = 0
            if self._stop_event.is_set():
                # read after stop was requested: hand them straight back
                for m in msgs:
                    self._flights[m.msg_id] = Flight(msg=m)
                return
            suspect = next((m for m in msgs if app.suspect(m)), None)
            if suspect is not None:
                await self._isolate(suspect, msgs)
                continue
            for m in msgs:
                self._dispatch(m)
            self._runs.start()
            if len(msgs) == qty:
                await asyncio.sleep(0)
                continue
            wait = self._poll
            if notified:
                wait = min(wait, self.settle_seconds)
            if wait > SHORT_WAIT_SECONDS:
                # not for a short wait (the settle read after a NOTIFY): the next
                # read comes soon anyway, and the round trip would stand between
                # this read and the handlers it just started
                nxt = await self._reader.run(app.next_visible)
                if nxt is not None:
                    wait = min(wait, max(nxt, 0.001))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait)

    def _dispatch(self, msg: M) -> None:
        flight = Flight(msg=msg)
        self._flights[msg.msg_id] = flight
        self._runs.backlog.append(flight)

    async def _isolate(self, suspect: M, msgs: Sequence[M]) -> None:
        """Run a suspect alone: a poison message that kills the process then takes
        no other message's attempt with it.

        Everything else read with it is handed back unread (its read given back);
        if other messages are still in flight, the suspect goes back too (visible
        at once) and reading waits until they are done. While the suspect runs,
        nothing else is read.
        """
        self._isolating = True  # nothing claimed for it is taken meanwhile (adopt)
        try:
            alone = not self._flights
            others = [m.msg_id for m in msgs if m is not suspect]
            if others:
                await self._reader.run(
                    functools.partial(self._app.postpone, msg_ids=others, seconds=POSTPONE_SECONDS)
                )
            if alone:
                self._dispatch(suspect)
                self._runs.start()
            else:
                await self._reader.run(
                    functools.partial(self._app.postpone, msg_ids=[suspect.msg_id], seconds=0)
                )
            while self._flights and not self._stop_event.is_set():
                self._idle.clear()
                await self._idle.wait()
        finally:
            self._isolating = False

    # -- ending -----------------------------------------------------------------------------

    def _ending(self, exc: KeyboardInterrupt | SystemExit, where: str) -> None:
        """The process is to end (``exc``, raised by ``where``): stop everything
        gracefully; the owner raises ``exc`` once stopped (:attr:`exit`)."""
        if self.exit is None:
            self.exit = exc
            log.warning("%s: %s raised %s; stopping", self.name, where, type(exc).__name__)
        self._stop_all()

    def _handled(self, outcome: O | None, flight: Flight[M]) -> None:
        if outcome is None:
            self._forget(flight)
        else:
            self._flushing.put(outcome, flight)

    def _forget(self, flight: Flight[M]) -> None:
        self._flights.pop(flight.msg.msg_id, None)
        if not self._flights:
            self._idle.set()
        if not self._flights or self._capacity - len(self._flights) >= self._read_threshold:
            self._room.set()


async def _read(app: ConsumerApp[M, O], conn: Conn, *, qty: int) -> Sequence[M]:
    return await app.read(conn, qty)
