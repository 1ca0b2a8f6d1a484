"""A consumer's recording side: outcomes queued by its runners, recorded in groups.

Each flusher has its own connection and task: it takes every outcome queued so far
and hands the group to the app's ``record`` (one transaction), so throughput is not
one commit per message, and one group commits while the next is being built. A
flusher ends on its own stop sentinel, after recording what was queued before it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable
from typing import Generic

import attrs

from commandbus.engine.db.connect import ResilientConnection
from commandbus.engine.queues.app import ConsumerApp, M, O
from commandbus.engine.queues.stopping import end_tasks

log = logging.getLogger("commandbus.consumer")


@attrs.define
class Flight(Generic[M]):
    msg: M  # a message between read and done
    started: bool = False


class Flushers(Generic[M, O]):
    """Records a consumer's outcomes in groups, with ``count`` flushers.

    Without ``order_key`` the flushers share one queue; with it, the outcomes of
    one key go to one flusher, so they are recorded in the order they were handled
    (a saga's requests, say), never by two flushers at once. ``done(flight)`` is
    called for each recorded message; ``ending(exc, where)`` when recording code
    raised SystemExit or KeyboardInterrupt (the group is then handed back).
    """

    def __init__(
        self,
        url: str,
        app: ConsumerApp[M, O],
        *,
        name: str,
        count: int,
        reconnect_timeout: float,
        order_key: Callable[[O], Hashable] | None,
        done: Callable[[Flight[M]], None],
        ending: Callable[[KeyboardInterrupt | SystemExit, str], None],
    ) -> None:
        self._app = app
        self._name = name
        self._order_key = order_key
        self._done = done
        self._ending = ending
        # ``None`` in a queue is a flusher's stop sentinel
        shared: asyncio.Queue[tuple[O, Flight[M]] | None] = asyncio.Queue()
        self._queues = (
            [shared] * count if order_key is None else [asyncio.Queue() for _ in range(count)]
        )
        self.connections = [
            ResilientConnection(url, what=f"{name} flusher", retry_for=reconnect_timeout)
            for _ in range(count)
        ]
        self.tasks: list[asyncio.Task[None]] = []

    async def open(self) -> None:
        """Connect every flusher (with retries), so start-up problems show at once."""
        for flusher in self.connections:
            await flusher.open()

    def start(self) -> list[asyncio.Task[None]]:
        self.tasks = [
            asyncio.create_task(self._loop(i), name=f"commandbus-flusher-{self._name}-{i}")
            for i in range(len(self.connections))
        ]
        return self.tasks

    def put(self, outcome: O, flight: Flight[M]) -> None:
        """Queue an outcome for recording."""
        queues = self._queues
        if self._order_key is None or len(queues) == 1:
            queues[0].put_nowait((outcome, flight))
        else:
            queues[hash(self._order_key(outcome)) % len(queues)].put_nowait((outcome, flight))

    def unrecorded(self) -> int:
        """Outcomes still waiting to be recorded (each queue counted once)."""
        return sum(q.qsize() for q in {id(q): q for q in self._queues}.values())

    async def stop(self, timeout: float) -> None:  # noqa: ASYNC109
        """Record what is queued, then end: each flusher on its sentinel, or cut off
        after ``timeout`` seconds (what it held comes back with the stop's release)."""
        for queue in self._queues[: len(self.tasks)]:
            queue.put_nowait(None)  # one each (the shared queue: one per flusher)
        if self.tasks:
            _, late = await asyncio.wait(self.tasks, timeout=timeout)
            if late:
                log.warning(
                    "%s: could not record %d outcomes in time; their messages come back",
                    self._name,
                    self.unrecorded(),
                )
            await end_tasks(late, f"{self._name} flusher", self.connections)
        for task in self.tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.error("%s: flusher failed: %r", self._name, task.exception())

    async def _loop(self, i: int) -> None:
        """Record queued outcomes, a group at a time, until this flusher's stop sentinel."""
        queue = self._queues[i]
        flusher = self.connections[i]
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
            # if recording fails, the group's messages stay held: the stop that
            # follows hands them back at once
            try:
                await self._app.record(flusher, [(o, f.msg) for o, f in group])
            except (KeyboardInterrupt, SystemExit) as exc:
                # raised by code recording runs (a saga's data builder): as in a
                # handler, a graceful stop; this group is handed back, not recorded
                self._ending(exc, "code run while recording")
                return
            for _o, flight in group:
                self._done(flight)
            if last:
                return
