"""Which bad argument send_batch reports when a batch holds several."""

from __future__ import annotations

import pytest

from commandbus import CommandBus, CommandRequest, ValidationError


async def test_a_bad_name_anywhere_is_reported_before_other_bad_arguments(
    bus: CommandBus,
) -> None:
    # names (domain, command type, reply queue) are checked for every command before
    # anything is sent (the queues must exist first); the rest part by part
    await bus.send("payments", "Charge", {})
    batch = [CommandRequest(domain="payments", command_type="C") for _ in range(1000)]
    batch[5] = CommandRequest(domain="payments", command_type="C", max_attempts=0)
    batch[900] = CommandRequest(domain="Bad Name", command_type="C")
    with pytest.raises(ValidationError, match=r"^commands\[900\]: invalid domain"):
        await bus.send_batch(batch)
    # without a bad name, the first other bad argument is reported
    batch[900] = CommandRequest(domain="payments", command_type="C", delay=-1)
    with pytest.raises(ValidationError, match=r"^commands\[5\]: max_attempts"):
        await bus.send_batch(batch)
