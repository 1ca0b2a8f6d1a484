"""Version pinning: a saga keeps the definition version it started with. A
coordinator without that version reports the saga blocked (once, in its events
and its log) and never advances it; one with the version finishes it."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from commandbus import Compensation, Saga, SagaStatus, Step
from saga_apps import assert_consistent, final, history, running
from support import wait_for

# each test runs with the coordinator moving sagas, then with the workers doing it
pytestmark = pytest.mark.usefixtures("saga_path")


def _order(ctx: Any) -> dict[str, Any]:
    return {"order_id": ctx.input["order_id"], "behaviour": ctx.input.get("behaviour", {})}


RESERVE = Step(
    "reserve",
    domain="inventory",
    command="Reserve",
    data=_order,
    compensation=Compensation("Release", data=_order),
)
V1 = Saga(
    "pinned",
    version=1,
    steps=[RESERVE, Step("charge", domain="payments", command="Charge", data=_order)],
)
V2 = Saga(
    "pinned",
    version=2,
    steps=[RESERVE, Step("ship", domain="shipping", command="Ship", data=_order)],
)


async def blocked_events(h: Any, saga_id: Any) -> int:
    return [t for t, _s in await history(h, saga_id)].count("SagaBlocked")


async def bring_forward(h: Any) -> None:
    """Make the messages a coordinator postponed visible now."""
    async with h.bus.pool.connection() as c:
        await c.execute("UPDATE pgmq.q_commandbus_sagas SET vt = clock_timestamp()")


async def postponed_again(h: Any) -> bool:
    """Every message in the saga queue was read and put off again."""
    async with h.bus.pool.connection() as c:
        cur = await c.execute(
            "SELECT count(*), bool_and(vt > clock_timestamp() + interval '10 seconds')"
            "  FROM pgmq.q_commandbus_sagas"
        )
        row = await cur.fetchone()
    return row is not None and row[0] > 0 and bool(row[1])


async def test_a_saga_keeps_its_version_and_waits_for_a_coordinator_that_has_it(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="commandbus.coordinator")
    async with running(dsn, V2) as h:
        journal = h.journal
        old = await h.sagas.start_sagas(V1, [{"order_id": "old-1"}, {"order_id": "old-2"}])
        new = await h.sagas.start_saga(V2, {"order_id": "new-1"})
        # v2 runs beside the blocked v1 sagas
        assert (await final(h, new.saga_id)).status is SagaStatus.COMPLETED
        for s in old:
            await wait_for(lambda s=s: _blocked(h, s.saga_id))
        # read again later: still blocked, recorded once
        await bring_forward(h)
        await wait_for(lambda: postponed_again(h))
        for s in old:
            assert await blocked_events(h, s.saga_id) == 1
            rec = await h.sagas.get_saga(s.saga_id)
            assert rec is not None
            assert rec.status is SagaStatus.RUNNING and rec.definition_version == 1
            assert rec.state.blocked is not None and "version 1" in rec.state.blocked
            # never silently advanced: the reserve's outcome waits to be decided
            assert rec.current_steps == ("reserve",)
        await assert_consistent(h)
    errors = [r.getMessage() for r in caplog.records if r.name == "commandbus.coordinator"]
    assert any("'pinned' version 1 is not registered" in m and "pinned v2" in m for m in errors), (
        errors
    )
    assert sum("'pinned' version 1" in m for m in errors) == 1  # one clear line, not a flood
    assert journal.of("new-1") == ["Reserve", "Ship"]

    async with running(dsn, V1, V2, journal=journal) as h:
        await bring_forward(h)
        done = [await final(h, s.saga_id) for s in old]
        await assert_consistent(h)
    assert [r.status for r in done] == [SagaStatus.COMPLETED] * 2
    assert all(r.state.blocked is None for r in done)
    # each ran the steps of the version it started with
    assert journal.of("old-1") == ["Reserve", "Charge"]
    assert journal.of("old-2") == ["Reserve", "Charge"]


async def _blocked(h: Any, saga_id: Any) -> bool:
    return await blocked_events(h, saga_id) == 1


async def test_a_coordinator_with_no_sagas_blocks_and_never_advances(dsn: str) -> None:
    # the reply waits for a coordinator (these workers do not move the saga)
    async with running(dsn, V1, coordinators=0, inline=False) as h:
        started = await h.sagas.start_saga(V1, {"order_id": "b1"})
        await wait_for(lambda: "Reserve" in h.journal.of("b1"))
    other = Saga("other", steps=[Step("x", domain="notify", command="Email")])
    async with running(dsn, other) as h:
        await wait_for(lambda: _blocked(h, started.saga_id))
        rec = await h.sagas.get_saga(started.saga_id)
        await assert_consistent(h)
    assert rec is not None and rec.status is SagaStatus.RUNNING
    assert "'pinned' version 1 is not registered" in (rec.state.blocked or "")
