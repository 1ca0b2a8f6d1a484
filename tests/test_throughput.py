"""Outcomes per minute (the dashboard's charts): exact counts, from the partial index."""

from __future__ import annotations

from typing import Any

import pytest
from psycopg import sql

from commandbus import (
    BusinessRuleError,
    Command,
    CommandBus,
    HandlerContext,
    HandlerRegistry,
    PermanentCommandError,
    ValidationError,
    Worker,
)
from commandbus.monitoring import throughput
from commandbus.monitoring.activity import _throughput_statement
from support import FAST, scalar, wait_for


def _registry() -> HandlerRegistry:
    reg = HandlerRegistry()

    @reg.handler("payments", "Charge")
    async def charge(cmd: Command, ctx: HandlerContext) -> Any:
        if cmd.data["how"] == "refuse":
            raise BusinessRuleError("card declined", code="DECLINED")
        if cmd.data["how"] == "break":
            raise PermanentCommandError("no such account", code="BROKEN")
        return {"ok": True}

    return reg


async def test_outcomes_per_minute_are_counted_exactly(dsn: str, bus: CommandBus) -> None:
    hows = ["ok"] * 5 + ["refuse"] * 2 + ["break"] * 3
    for how in hows:
        await bus.send("payments", "Charge", {"how": how})
    async with (
        Worker(dsn, _registry(), domain="payments", config=FAST),
        bus.pool.connection() as c,
    ):
        await wait_for(lambda: _settled(c, len(hows)))
    tp = await throughput(bus, minutes=3)
    assert len(tp.minutes) == 3
    assert [m.minute for m in tp.minutes] == sorted(m.minute for m in tp.minutes)
    assert sum(m.completed for m in tp.minutes) == 5
    assert sum(m.failed for m in tp.minutes) == 5  # 2 business-rule failures + 3 to the TSQ


async def _settled(c: Any, n: int) -> bool:
    settled = await scalar(
        c,
        "SELECT count(*) FROM commandbus.command"
        " WHERE status IN ('COMPLETED', 'FAILED', 'IN_TROUBLESHOOTING_QUEUE')",
    )
    return bool(settled == n)


async def test_the_count_reads_the_partial_index_of_outcomes(bus: CommandBus) -> None:
    """The planner must see that the query implies the index's condition (else it
    would scan the whole event log): with sequential scans off, the plan names it."""
    async with bus.pool.connection() as c, c.transaction():
        await c.execute("SET LOCAL enable_seqscan = off")
        cur = await c.execute(
            sql.SQL("EXPLAIN ") + _throughput_statement(),
            {"minutes": 30, "completed": ["CommandCompleted"], "failed": ["CommandFailed"]},
        )
        plan = "\n".join(str(r[0]) for r in await cur.fetchall())
    assert "event_outcome_time_idx" in plan, plan


@pytest.mark.parametrize("minutes", [0, -1, 24 * 60 + 1, "30", 1.5, None, True])
async def test_bad_windows_are_refused(bus: CommandBus, minutes: Any) -> None:
    with pytest.raises(ValidationError, match="minutes"):
        await throughput(bus, minutes=minutes)
