"""Sagas end to end: real workers, a real coordinator, a real PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from commandbus import SagaStatus
from saga_apps import ORDER, PARALLEL, assert_consistent, running
from support import wait_for

# each test runs with the coordinator moving sagas, then with the workers doing it
pytestmark = pytest.mark.usefixtures("saga_path")


async def _final(h: Any, saga_id: Any, timeout: float = 20.0) -> Any:  # noqa: ASYNC109
    async def done() -> bool:
        rec = await h.sagas.get_saga(saga_id)
        return rec is not None and rec.status.is_final

    await wait_for(done, timeout=timeout)
    return await h.sagas.get_saga(saga_id)


async def _events(h: Any, saga_id: Any) -> list[tuple[str, str | None]]:
    return [(e.event_type, e.data.get("step")) for e in await h.sagas.saga_history(saga_id)]


async def test_happy_path_runs_every_step_and_passes_results(dsn: str) -> None:
    async with running(dsn) as h:
        started = await h.sagas.start_saga(ORDER, {"order_id": "o1"})
        assert started.created
        rec = await _final(h, started.saga_id)
        report = await h.sagas.verify_projection()
    assert report.ok, report.differences
    assert report.checked == 1
    assert rec.status is SagaStatus.COMPLETED
    assert rec.results == {
        "reserve": {"reservation": "r-o1"},
        "charge": {"charge": "c-o1"},
        "ship": {"tracking": "t-o1"},
    }
    assert h.journal.of("o1") == ["Reserve", "Charge", "Ship"]
    assert rec.ended_at is not None


async def test_failure_compensates_completed_steps_in_reverse(dsn: str) -> None:
    async with running(dsn) as h:
        started = await h.sagas.start_saga(
            ORDER, {"order_id": "o2", "behaviour": {"Ship": "business"}}
        )
        rec = await _final(h, started.saga_id)
        events = await _events(h, started.saga_id)
        await assert_consistent(h)
    assert rec.status is SagaStatus.COMPENSATED
    assert h.journal.of("o2") == ["Reserve", "Charge", "Ship", "Refund", "Release"]
    compensations = [s for t, s in events if t == "SagaStepCompensating"]
    assert compensations == ["charge", "reserve"]
    # each compensation waited for the one before it
    order = [(t, s) for t, s in events if t in ("SagaStepCompensating", "SagaStepCompensated")]
    assert order == [
        ("SagaStepCompensating", "charge"),
        ("SagaStepCompensated", "charge"),
        ("SagaStepCompensating", "reserve"),
        ("SagaStepCompensated", "reserve"),
    ]


async def test_parallel_group_joins_and_compensates_its_completed_members(dsn: str) -> None:
    async with running(dsn, PARALLEL) as h:
        ok = await h.sagas.start_saga(PARALLEL, {"order_id": "p1"})
        bad = await h.sagas.start_saga(
            PARALLEL, {"order_id": "p2", "behaviour": {"Charge": "business"}}
        )
        rec_ok = await _final(h, ok.saga_id)
        rec_bad = await _final(h, bad.saga_id)
        await assert_consistent(h)
    assert rec_ok.status is SagaStatus.COMPLETED
    assert h.journal.of("p1")[0] == "Reserve" and h.journal.of("p1")[-1] == "Ship"
    assert sorted(h.journal.of("p1")[1:3]) == ["Charge", "Email"]
    assert rec_bad.status is SagaStatus.COMPENSATED
    # the email went out (completed member): it is compensated, then the reserve
    calls = h.journal.of("p2")
    assert calls.index("Sms") < calls.index("Release")
    assert "Refund" not in calls  # the charge failed: nothing to undo


async def test_timeout_compensates_and_a_late_timer_never_fires(dsn: str) -> None:
    async with running(dsn) as h:
        started = await h.sagas.start_saga(
            ORDER, {"order_id": "o3", "behaviour": {"Charge": "hang"}}
        )
        rec = await _final(h, started.saga_id)
        events = await _events(h, started.saga_id)
        await assert_consistent(h)
    assert rec.status is SagaStatus.COMPENSATED
    assert ("SagaStepTimedOut", "charge") in events
    assert h.journal.of("o3") == ["Reserve", "Charge", "Release"]


@pytest.mark.parametrize("key", ["order-42"])
async def test_idempotent_start_returns_the_existing_saga(dsn: str, key: str) -> None:
    async with running(dsn) as h:
        a = await h.sagas.start_saga(ORDER, {"order_id": "o4"}, idempotency_key=key)
        b = await h.sagas.start_saga(ORDER, {"order_id": "o4"}, idempotency_key=key)
        assert a.saga_id == b.saga_id and a.created and not b.created
        await _final(h, a.saga_id)
        await assert_consistent(h)
    assert h.journal.of("o4") == ["Reserve", "Charge", "Ship"]
