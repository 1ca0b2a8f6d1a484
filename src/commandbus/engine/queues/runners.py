"""A consumer's runners: at most ``concurrency`` tasks handling its in-memory backlog.

Each runner takes messages from the backlog one after the other and hands each
outcome to ``done`` (``None``: the message is done, nothing to record). A runner
busy in a slow handler is not free, so it never holds up the messages after it: a
message dispatched while every runner is busy gets a runner of its own, up to
``concurrency``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from typing import Generic

from commandbus.engine.queues.app import M, O
from commandbus.engine.queues.flushing import Flight

log = logging.getLogger("commandbus.consumer")


class Runners(Generic[M, O]):
    """The runner tasks of one consumer, over its backlog."""

    def __init__(
        self,
        name: str,
        concurrency: int,
        handle: Callable[[M], Awaitable[O | None]],
        *,
        done: Callable[[O | None, Flight[M]], None],
        ending: Callable[[KeyboardInterrupt | SystemExit, str], None],
    ) -> None:
        self._name = name
        self._concurrency = concurrency
        self._handle = handle
        self._done = done
        self._ending = ending
        #: messages read (or handed over) and not started yet
        self.backlog: collections.deque[Flight[M]] = collections.deque()
        #: every runner task not ended yet (a stop waits for, then ends, these)
        self.tasks: set[asyncio.Task[None]] = set()
        #: set by a stop: runners start nothing more
        self.stopping = False
        # runners that will still take from the backlog: one that left its loop
        # counts no more, though its task has not ended yet (a message dispatched
        # in that moment would otherwise wait for the next read)
        self._looping: set[asyncio.Task[None]] = set()
        self._busy = 0  # runners inside a handler right now

    def start(self) -> None:
        """Start runners, at most ``concurrency``, for what the backlog holds."""
        while len(self._looping) < self._concurrency and (
            len(self._looping) - self._busy < len(self.backlog)
        ):
            task = asyncio.create_task(self._run(), name=f"commandbus-{self._name}-runner")
            self.tasks.add(task)
            self._looping.add(task)
            task.add_done_callback(self.tasks.discard)
            task.add_done_callback(self._looping.discard)

    async def _run(self) -> None:
        """Handle messages from the backlog one after the other until it is empty."""
        handled = 0
        while self.backlog and not self.stopping:
            flight = self.backlog.popleft()
            flight.started = True
            self._busy += 1
            try:
                outcome = await self._handle(flight.msg)
            except (KeyboardInterrupt, SystemExit) as exc:
                # raised in a handler: sys.exit(), a signal handler's exit, a second
                # Ctrl-C under asyncio.run. The process is to end, not the message to
                # fail: everything stops gracefully (what finished is recorded, this
                # message is handed back with the rest) and the owner raises it then
                self._ending(exc, "a handler")
                break
            except Exception:
                # e.g. the database went away while recording: the message comes
                # back after its visibility timeout (and counts as a delivery)
                log.exception("%s: handling message %s failed", self._name, flight.msg.msg_id)
                outcome = None
            finally:
                self._busy -= 1
            self._done(outcome, flight)
            handled += 1
            if handled % 32 == 0:
                await asyncio.sleep(0)  # let the reader and flushers run
        task = asyncio.current_task()
        if task is not None:
            self._looping.discard(task)
