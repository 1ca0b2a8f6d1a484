"""What the hand-over tests share: a two-step saga across domains a and b, a check
that sagas ended, and a command built as a saga's next step is (for claiming)."""

from __future__ import annotations

import asyncio
import collections
import random
import uuid
from typing import Any

from commandbus import Saga, SagaClient, Step
from commandbus.engine.commands.outgoing import assembled
from commandbus.engine.commands.store import OutgoingCommand

TWO = Saga(
    "two",
    steps=[
        Step("one", domain="a", command="One", data=lambda ctx: {"n": ctx.input["n"]}),
        Step("two", domain="b", command="Two", data=lambda ctx: {"n": ctx.input["n"]}),
    ],
)


async def all_final(sagas: SagaClient, ids: list[Any]) -> bool:
    """Whether every one of these sagas has ended."""
    for sid in ids:
        rec = await sagas.get_saga(sid)
        if rec is None or not rec.status.is_final:
            return False
    return True


def outgoing(domain: str, command_type: str, *, delay: float = 0.0) -> OutgoingCommand:
    """A new command ready to send, as a saga's next step is."""
    return assembled(
        domain=domain,
        command_id=uuid.uuid4(),
        command_type=command_type,
        correlation_id=uuid.uuid4(),
        causation_id=None,
        reply_to=None,
        saga_id=None,
        batch_id=None,
        max_attempts=3,
        delay_seconds=delay,
        data_json='{"amount": 5}',
        trace={},
    )


class Runs:
    """The handler of step two: counts each command's runs and runs at once."""

    def __init__(self, seconds: float | None = None, rnd: random.Random | None = None) -> None:
        self.runs: collections.Counter[str] = collections.Counter()
        self.running: collections.Counter[str] = collections.Counter()
        self.overlaps = 0
        self._seconds = seconds
        self._rnd = rnd

    async def two(self, cmd: Any, ctx: Any) -> None:
        cid = str(cmd.command_id)
        self.runs[cid] += 1
        self.running[cid] += 1
        self.overlaps += self.running[cid] > 1
        try:
            if self._rnd is not None:
                await asyncio.sleep(self._rnd.random() * 0.05)
            elif self._seconds:
                await asyncio.sleep(self._seconds)
        finally:
            self.running[cid] -= 1

    def twice(self) -> dict[str, int]:
        return {k: v for k, v in self.runs.items() if v > 1}
