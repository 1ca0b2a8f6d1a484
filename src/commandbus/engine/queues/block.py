"""Running a consumer for the length of an ``async with`` block.

``async with Worker(...)`` (or ``Coordinator(...)``) runs its ``run()`` in a task:
the block starts once it is connected and listening (a start-up failure is raised
by the ``async with``), and ending the block stops it gracefully and waits.

A handler (or code run while recording) that ends the process, with SystemExit or
KeyboardInterrupt, makes ``run()`` stop gracefully and then raise it. Raised in a
task, that would end the event loop under the block: whatever the code around it
holds open (a bus, a pool) would be left as it is. Instead the block is
interrupted (its task is cancelled) and the ``async with`` raises the SystemExit
or KeyboardInterrupt, so the code around it unwinds as for any exception.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any


class BlockRun:
    """The task of a consumer run for an ``async with`` block; see the module docstring.

    Only the task that entered the block is interrupted, and only while the block's
    own code runs: during the entry and the exit that task is already waiting on
    the consumer, and raises what ended it there.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._task: asyncio.Task[Any] | None = None
        self._owner: asyncio.Task[Any] | None = None
        #: what ``run()`` raised to end the process, for the ``async with`` to raise
        self._exit: SystemExit | KeyboardInterrupt | None = None
        #: the block's own code runs (between the entry and the exit)
        self._inside = False
        #: whether the block's task was cancelled to say so
        self._interrupted = False

    async def enter(
        self,
        run: Callable[[], Awaitable[Any]],
        ready: asyncio.Event,
        stop_now: Callable[[], None],
    ) -> None:
        """Start ``run()`` and wait until ``ready`` (or until it ended: its error)."""
        if self._task is not None:
            raise RuntimeError(f"{self._name} is already running for an async with block")
        self._owner = asyncio.current_task()
        task = asyncio.create_task(self._run(run), name=self._name)
        self._task = task
        waiting = asyncio.create_task(ready.wait(), name=f"{self._name}-ready")
        try:
            try:
                await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiting.cancel()
                await asyncio.gather(waiting, return_exceptions=True)
        except BaseException:
            # cancelled (or interrupted) while starting: stop at once and wait
            stop_now()
            await asyncio.gather(task, return_exceptions=True)
            self._task = None
            self._raise_exit()  # the process ends: that comes first
            raise
        if task.done():
            self._task = None
            task.result()  # raises what stopped it
            self._raise_exit()
        self._inside = True

    async def exit(self, request_stop: Callable[[], None]) -> None:
        """Stop gracefully and wait; raise what ended the process, if anything did."""
        self._inside = False
        task, self._task = self._task, None
        if task is None:
            return
        request_stop()
        try:
            await task
        except asyncio.CancelledError:
            if not self._interrupted:
                raise
            # this block's own interruption, delivered late: the task is ending
            await asyncio.wait({task})
        self._raise_exit()

    async def _run(self, run: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return await run()
        except (SystemExit, KeyboardInterrupt) as exc:
            # raised in this task it would end the event loop: the ``async with``
            # raises it instead, interrupting the block's code if that is running
            self._exit = exc
            owner = self._owner
            if self._inside and owner is not None and not owner.done():
                self._interrupted = True
                owner.cancel()
            return None

    def _raise_exit(self) -> None:
        exc, self._exit = self._exit, None
        if exc is None:
            return
        if self._interrupted:
            self._interrupted = False
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()  # the cancellation was this block's, not the caller's
        raise exc
