"""BlockRun, driven by a stand-in for ``run()`` (no database): a SystemExit or
KeyboardInterrupt from the consumer comes out of its ``async with`` at whatever
moment it happens (starting, inside the block, draining), and a cancellation that
is not the block's own is never swallowed.

Each case runs in an event loop of its own (in a thread): a SystemExit that escaped
would end the loop it is raised in."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from commandbus.engine.queues.block import BlockRun


class StandIn:
    """``run()`` sets ``ready``, then raises SystemExit after ``k`` yields, either at
    once (``when="run"``) or once asked to stop (``"drain"``); ``"none"``: it ends
    when asked to stop."""

    def __init__(self, k: int, when: str) -> None:
        self.ready = asyncio.Event()
        self.stop = asyncio.Event()
        self.k = k
        self.when = when

    async def run(self) -> str:
        self.ready.set()
        if self.when != "run":
            await self.stop.wait()
        for _ in range(self.k):
            await asyncio.sleep(0)
        if self.when == "none":
            return "stats"
        raise SystemExit(7)


class Block:
    def __init__(self, stand_in: StandIn) -> None:
        self.stand_in = stand_in
        self.block = BlockRun("stand-in")

    async def __aenter__(self) -> Block:
        await self.block.enter(self.stand_in.run, self.stand_in.ready, self.stand_in.stop.set)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.block.exit(self.stand_in.stop.set)


def outcome(main: Callable[[], Awaitable[None]]) -> str:
    """What came out of ``main`` (run in a loop of its own), and the task's pending
    cancellations; any exception the loop reported as unhandled fails the test."""
    said: list[str] = []
    unhandled: list[dict[str, Any]] = []

    async def wrapped() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, c: unhandled.append(c))
        task = asyncio.current_task()
        assert task is not None
        try:
            await main()
            said.append("returned")
        except BaseException as exc:
            said.append(f"{exc!r} cancelling={task.cancelling()}")

    def run() -> None:
        try:
            asyncio.run(wrapped())
        except BaseException as exc:
            said.append(f"the loop ended: {exc!r}")

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "it hung"
    assert unhandled == []
    return "; ".join(said)


@pytest.mark.parametrize("k", range(8))
def test_an_exit_inside_the_block_interrupts_it_and_comes_out(k: int) -> None:
    async def main() -> None:
        async with Block(StandIn(k, "run")):
            await asyncio.sleep(5)

    assert outcome(main) == "SystemExit(7) cancelling=0"


@pytest.mark.parametrize("k", range(4))
def test_an_exit_while_the_block_ends_comes_out(k: int) -> None:
    async def main() -> None:
        async with Block(StandIn(k, "drain")):
            pass

    assert outcome(main) == "SystemExit(7) cancelling=0"


def test_an_exit_before_ready_comes_out_of_the_entry() -> None:
    async def run() -> None:
        await asyncio.sleep(0.01)
        raise SystemExit(9)

    async def main() -> None:
        await BlockRun("stand-in").enter(run, asyncio.Event(), lambda: None)

    assert outcome(main) == "SystemExit(9) cancelling=0"


def test_a_timeout_around_the_block_is_still_a_timeout() -> None:
    async def main() -> None:
        async with asyncio.timeout(0.05), Block(StandIn(0, "none")):
            await asyncio.sleep(5)

    assert outcome(main) == "TimeoutError() cancelling=0"


def test_an_exit_while_a_timeout_stops_the_block_comes_out() -> None:
    async def main() -> None:
        async with asyncio.timeout(0.05), Block(StandIn(2, "drain")):
            await asyncio.sleep(5)

    assert outcome(main).startswith("SystemExit(7)")


def test_an_exit_while_a_cancelled_entry_stops_comes_out() -> None:
    # the caller's timeout hits while starting; stopping, run() raises SystemExit
    stop = asyncio.Event()

    async def run() -> None:
        await stop.wait()
        await asyncio.sleep(0.01)
        raise SystemExit(4)

    async def main() -> None:
        async with asyncio.timeout(0.02):
            await BlockRun("stand-in").enter(run, asyncio.Event(), stop.set)

    assert outcome(main).startswith("SystemExit(4)")


def test_one_block_at_a_time() -> None:
    async def main() -> None:
        block = Block(StandIn(0, "none"))
        async with block:
            await block.block.enter(block.stand_in.run, block.stand_in.ready, lambda: None)

    assert outcome(main) == (
        "RuntimeError('stand-in is already running for an async with block') cancelling=0"
    )
