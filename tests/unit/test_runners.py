"""The runners of a consumer (engine/queues/runners.py), without a database."""

from __future__ import annotations

import asyncio
from typing import Any

import attrs

from commandbus.engine.queues.flushing import Flight
from commandbus.engine.queues.runners import Runners


def test_a_message_dispatched_as_the_last_runner_ends_gets_a_runner() -> None:
    """The last runner has left its loop (the backlog was empty) but its task has not
    ended yet when a message is dispatched: a new runner takes it (it used to wait
    in the backlog for the consumer's next read, and for good behind a suspect)."""

    async def main() -> list[str]:
        handled: list[str] = []
        runs: Runners[Msg, None] = Runners(
            "test", 1, _handle(handled), done=lambda _o, _f: None, ending=_never
        )

        def dispatch_late(outcome: Any, flight: Flight[Msg]) -> None:
            if flight.msg.name == "first":
                # runs right after this runner's last step, before its task's end
                asyncio.get_running_loop().call_soon(_dispatch, runs, "second")

        runs._done = dispatch_late  # type: ignore[method-assign]
        _dispatch(runs, "first")
        for _ in range(20):
            await asyncio.sleep(0)
        return handled

    assert asyncio.run(main()) == ["first", "second"]


def test_runners_never_exceed_concurrency_and_start_for_a_busy_one() -> None:
    async def main() -> tuple[int, list[str]]:
        gate = asyncio.Event()
        handled: list[str] = []
        peak = 0
        running = 0

        async def handle(msg: Msg) -> None:
            nonlocal peak, running
            running += 1
            peak = max(peak, running)
            if msg.name == "slow":
                await gate.wait()
            running -= 1
            handled.append(msg.name)

        runs: Runners[Msg, None] = Runners(
            "test", 3, handle, done=lambda _o, _f: None, ending=_never
        )
        _dispatch(runs, "slow")
        await asyncio.sleep(0)
        for i in range(10):
            _dispatch(runs, f"m{i}")
        for _ in range(50):
            await asyncio.sleep(0)
        assert "slow" not in handled and len(handled) == 10  # not held up by the slow one
        gate.set()
        for _ in range(20):
            await asyncio.sleep(0)
        return peak, handled

    peak, handled = asyncio.run(main())
    assert peak <= 3
    assert handled[-1] == "slow"


@attrs.frozen
class Msg:
    name: str
    msg_id: int = 0


def _handle(handled: list[str]) -> Any:
    async def handle(msg: Msg) -> None:
        handled.append(msg.name)

    return handle


def _dispatch(runs: Runners[Msg, None], name: str) -> None:
    runs.backlog.append(Flight(msg=Msg(name)))
    runs.start()


def _never(exc: BaseException, where: str) -> None:
    raise AssertionError(f"{where} raised {exc!r}")
