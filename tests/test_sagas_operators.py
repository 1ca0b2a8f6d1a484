"""Operators and sagas: a command in the troubleshooting queue holds its saga
(WAITING_ON_OPERATOR) until an operator retries, completes or cancels it; a saga
can be cancelled (compensated), paused and resumed."""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

import pytest

from commandbus import (
    CommandStatus,
    Compensation,
    InvalidStateError,
    Saga,
    SagaFilter,
    SagaNotFoundError,
    SagaStatus,
    Step,
    ValidationError,
)
from saga_apps import (
    Harness,
    assert_consistent,
    commands_of,
    coordinating,
    final,
    history,
    running,
    status_is,
)
from support import wait_for

# each test runs with the coordinator moving sagas, then with the workers doing it
pytestmark = pytest.mark.usefixtures("saga_path")


def _order(ctx: Any) -> dict[str, Any]:
    return {"order_id": ctx.input["order_id"], "behaviour": ctx.input.get("behaviour", {})}


PLAIN = Saga(
    "plain",
    steps=[
        Step(
            "reserve",
            domain="inventory",
            command="Reserve",
            data=_order,
            compensation=Compensation("Release", data=_order),
        ),
        Step(
            "charge",
            domain="payments",
            command="Charge",
            data=_order,
            compensation=Compensation("Refund", data=_order),
        ),
        Step(
            "ship",
            domain="shipping",
            command="Ship",
            data=lambda ctx: {**_order(ctx), "charge": ctx.results["charge"]},
        ),
    ],
)

PIVOTED = Saga(
    "pivoted",
    steps=[
        Step(
            "reserve",
            domain="inventory",
            command="Reserve",
            data=_order,
            compensation=Compensation("Release", data=_order),
        ),
        Step("charge", domain="payments", command="Charge", data=_order, pivot=True),
        Step("ship", domain="shipping", command="Ship", data=_order),
    ],
)


async def command_of(h: Harness, saga_id: UUID, command_type: str) -> tuple[str, UUID]:
    async with h.bus.pool.connection() as c:
        cur = await c.execute(
            "SELECT domain, command_id FROM commandbus.command"
            " WHERE saga_id = %s AND command_type = %s",
            (saga_id, command_type),
        )
        row = await cur.fetchone()
    assert row is not None, command_type
    return row[0], row[1]


async def in_tsq(h: Harness, saga_id: UUID, command_type: str) -> tuple[str, UUID]:
    """The saga's command of this type, once it is in the troubleshooting queue."""

    async def there() -> bool:
        async with h.bus.pool.connection() as c:
            cur = await c.execute(
                "SELECT status FROM commandbus.command WHERE saga_id = %s AND command_type = %s",
                (saga_id, command_type),
            )
            row = await cur.fetchone()
        return row is not None and row[0] == CommandStatus.IN_TROUBLESHOOTING_QUEUE.value

    await wait_for(there, timeout=10)
    return await command_of(h, saga_id, command_type)


async def waiting_on_operator(h: Harness, saga_id: UUID, command_type: str) -> tuple[str, UUID]:
    target = await in_tsq(h, saga_id, command_type)
    rec = await status_is(h, saga_id, SagaStatus.WAITING_ON_OPERATOR, idle=True)
    step = next(s for s in rec.steps if s.command_id == target[1])
    assert step.status.value == "WAITING_ON_OPERATOR"
    assert rec.last_error is not None and rec.last_error["code"] == "PERMANENT"
    return target


async def _command_is(h: Harness, domain: str, command_id: UUID, status: CommandStatus) -> bool:
    return await command_status(h, domain, command_id) is status


async def command_status(h: Harness, domain: str, command_id: UUID) -> CommandStatus:
    rec = await h.bus.get_command(domain, command_id)
    assert rec is not None
    return rec.status


# -- TSQ: retry, complete, cancel --------------------------------------------------------------


async def test_a_step_in_the_tsq_waits_then_an_operator_retry_resumes_the_saga(
    dsn: str,
) -> None:
    async with running(dsn, PLAIN) as h:
        started = await h.sagas.start_saga(
            PLAIN, {"order_id": "q1", "behaviour": {"Charge": "tsq_once"}}
        )
        sid = started.saga_id
        domain, cid = await waiting_on_operator(h, sid, "Charge")
        assert h.journal.of("q1") == ["Reserve", "Charge"]
        listed = await h.sagas.list_sagas(where=SagaFilter(status="WAITING_ON_OPERATOR"))
        assert [r.saga_id for r in listed.items] == [sid]
        await h.bus.troubleshooting.retry(domain, cid, operator="ops")
        rec = await final(h, sid)
        events = await history(h, sid)
        await assert_consistent(h)
    assert rec.status is SagaStatus.COMPLETED
    assert h.journal.of("q1") == ["Reserve", "Charge", "Charge", "Ship"]
    assert events.index(("SagaStepWaitingOnOperator", "charge")) < events.index(
        ("SagaStepCompleted", "charge")
    )


async def test_an_operator_completes_a_tsq_step_with_a_result_the_next_step_uses(
    dsn: str,
) -> None:
    async with running(dsn, PLAIN) as h:
        started = await h.sagas.start_saga(
            PLAIN, {"order_id": "q2", "behaviour": {"Charge": "permanent"}}
        )
        sid = started.saga_id
        domain, cid = await waiting_on_operator(h, sid, "Charge")
        await h.bus.troubleshooting.complete(domain, cid, result={"charge": "by-hand"})
        rec = await final(h, sid)
        await assert_consistent(h)
    assert rec.status is SagaStatus.COMPLETED
    assert rec.results["charge"] == {"charge": "by-hand"}
    assert h.journal.of("q2") == ["Reserve", "Charge", "Ship"]


async def test_an_operator_cancels_a_tsq_step_and_the_saga_compensates(dsn: str) -> None:
    async with running(dsn, PLAIN) as h:
        started = await h.sagas.start_saga(
            PLAIN, {"order_id": "q3", "behaviour": {"Charge": "permanent"}}
        )
        sid = started.saga_id
        domain, cid = await waiting_on_operator(h, sid, "Charge")
        await h.bus.troubleshooting.cancel(domain, cid, reason="card stolen")
        rec = await final(h, sid)
        await assert_consistent(h)
    assert rec.status is SagaStatus.COMPENSATED
    # the charge never happened: only the reservation is undone
    assert h.journal.of("q3") == ["Reserve", "Charge", "Release"]


async def test_a_step_waiting_on_an_operator_has_no_timer_left(dsn: str) -> None:
    from saga_apps import ORDER  # its charge step has a timeout

    async with running(dsn, ORDER) as h:
        started = await h.sagas.start_saga(
            ORDER, {"order_id": "q4", "behaviour": {"Charge": "permanent"}}
        )
        await waiting_on_operator(h, started.saga_id, "Charge")
        async with h.bus.pool.connection() as c:
            cur = await c.execute(
                "SELECT count(*) FROM pgmq.q_commandbus_sagas WHERE message->>'kind' = 'timer'"
            )
            assert await cur.fetchone() == (0,)
        await assert_consistent(h)


async def test_a_tsq_after_the_pivot_waits_and_cannot_be_compensated(dsn: str) -> None:
    async with running(dsn, PIVOTED) as h:
        ok = await h.sagas.start_saga(
            PIVOTED, {"order_id": "q5", "behaviour": {"Ship": "permanent"}}
        )
        gone = await h.sagas.start_saga(
            PIVOTED, {"order_id": "q6", "behaviour": {"Ship": "permanent"}}
        )
        d1, c1 = await waiting_on_operator(h, ok.saga_id, "Ship")
        d2, c2 = await waiting_on_operator(h, gone.saga_id, "Ship")
        with pytest.raises(InvalidStateError, match="past its pivot"):
            await h.sagas.cancel_saga(ok.saga_id)
        await h.bus.troubleshooting.complete(d1, c1, result={"tracking": "manual"})
        await h.bus.troubleshooting.cancel(d2, c2)
        done = await final(h, ok.saga_id)
        failed = await final(h, gone.saga_id)
        await assert_consistent(h)
    assert done.status is SagaStatus.COMPLETED
    assert failed.status is SagaStatus.FAILED  # forward only: nothing is compensated
    assert h.journal.of("q6") == ["Reserve", "Charge", "Ship"]


@pytest.mark.parametrize(
    "action",
    [
        "retry",
        "complete",
        "cancel",
    ],
)
async def test_a_compensation_in_the_tsq_waits_for_an_operator(dsn: str, action: str) -> None:
    async with running(dsn, PLAIN) as h:
        started = await h.sagas.start_saga(
            PLAIN,
            {"order_id": "q7", "behaviour": {"Ship": "business", "Refund": "tsq_once"}},
        )
        sid = started.saga_id
        domain, cid = await in_tsq(h, sid, "Refund")
        rec = await status_is(h, sid, SagaStatus.COMPENSATION_FAILED, idle=True)
        assert rec.current_steps == ("charge",)
        assert "Release" not in h.journal.of("q7")  # the next one waits for it
        if action == "retry":
            await h.bus.troubleshooting.retry(domain, cid)
        elif action == "complete":
            await h.bus.troubleshooting.complete(domain, cid)
        else:
            await h.bus.troubleshooting.cancel(domain, cid, reason="refunded by phone")
        rec = await final(h, sid, timeout=5)
        await assert_consistent(h)
    assert rec.status is SagaStatus.COMPENSATED
    assert h.journal.of("q7")[-1] == "Release"


# -- cancel ------------------------------------------------------------------------------------


async def test_cancel_while_running_waits_for_the_step_then_compensates_in_reverse(
    dsn: str,
) -> None:
    async with running(dsn, PLAIN) as h:
        started = await h.sagas.start_saga(
            PLAIN, {"order_id": "c1", "behaviour": {"Charge": "gate"}}
        )
        sid = started.saga_id
        await wait_for(lambda: "Charge" in h.journal.of("c1"))
        await h.sagas.cancel_saga(sid, reason="customer changed mind", operator="alice")
        rec = await status_is(h, sid, SagaStatus.COMPENSATING, idle=True)
        assert rec.current_steps == ("charge",)  # it waits for the charge's outcome
        h.journal.gate("c1").set()
        rec = await final(h, sid)
        events = await h.sagas.saga_history(sid)
        with pytest.raises(InvalidStateError, match="COMPENSATED"):
            await h.sagas.cancel_saga(sid)
        await assert_consistent(h)
    assert rec.status is SagaStatus.COMPENSATED
    assert h.journal.of("c1") == ["Reserve", "Charge", "Refund", "Release"]
    cancel = next(e for e in events if e.event_type == "SagaCancelRequested")
    assert cancel.data["reason"] == "customer changed mind"
    assert cancel.data["operator"] == "alice"


async def test_cancel_while_waiting_on_an_operator_cancels_the_tsq_command(dsn: str) -> None:
    async with running(dsn, PLAIN) as h:
        started = await h.sagas.start_saga(
            PLAIN, {"order_id": "c2", "behaviour": {"Charge": "permanent"}}
        )
        sid = started.saga_id
        domain, cid = await waiting_on_operator(h, sid, "Charge")
        await h.sagas.cancel_saga(sid, operator="bob")
        rec = await final(h, sid)
        assert await command_status(h, domain, cid) is CommandStatus.CANCELLED
        await assert_consistent(h)
    assert rec.status is SagaStatus.COMPENSATED
    assert h.journal.of("c2") == ["Reserve", "Charge", "Release"]


async def test_cancel_after_an_operator_retried_the_waiting_step(dsn: str) -> None:
    """The status row still shows the step waiting on an operator, but its command
    is running again: the cancel is taken, and the saga compensates once the
    retried command answers."""
    async with running(dsn, PLAIN) as h:
        started = await h.sagas.start_saga(
            PLAIN, {"order_id": "c7", "behaviour": {"Charge": "tsq_then_gate"}}
        )
        sid = started.saga_id
        domain, cid = await waiting_on_operator(h, sid, "Charge")
        await h.bus.troubleshooting.retry(domain, cid)
        await wait_for(lambda: h.journal.of("c7").count("Charge") == 2)
        await h.sagas.cancel_saga(sid, reason="too late to charge")
        await status_is(h, sid, SagaStatus.WAITING_ON_OPERATOR, idle=True)
        h.journal.gate("c7").set()
        rec = await final(h, sid)
        await assert_consistent(h)
    assert rec.status is SagaStatus.COMPENSATED
    assert h.journal.of("c7") == ["Reserve", "Charge", "Charge", "Refund", "Release"]


async def test_cancel_before_the_coordinator_saw_the_tsq_notice(dsn: str) -> None:
    """The status row still says RUNNING when the operator cancels: the coordinator
    learns of the TSQ afterwards and must withdraw the command itself (so the
    workers leave the replies to it)."""
    async with running(dsn, PLAIN, coordinators=0, inline=False) as h:
        started = await h.sagas.start_saga(
            PLAIN, {"order_id": "c3", "behaviour": {"Reserve": "permanent"}}
        )
        sid = started.saga_id
        domain, cid = await in_tsq(h, sid, "Reserve")
        rec = await h.sagas.get_saga(sid)
        assert rec is not None and rec.status is SagaStatus.RUNNING
        await h.sagas.cancel_saga(sid)
        async with coordinating(dsn, PLAIN):
            rec = await final(h, sid, timeout=10)
            assert await command_status(h, domain, cid) is CommandStatus.CANCELLED
            await assert_consistent(h)
    assert rec.status is SagaStatus.COMPENSATED


async def test_a_step_that_lands_in_the_tsq_after_a_cancel_is_withdrawn(dsn: str) -> None:
    async with running(dsn, PLAIN) as h:
        started = await h.sagas.start_saga(
            PLAIN, {"order_id": "c4", "behaviour": {"Charge": "gate_tsq"}}
        )
        sid = started.saga_id
        await wait_for(lambda: "Charge" in h.journal.of("c4"))
        await h.sagas.cancel_saga(sid)
        await status_is(h, sid, SagaStatus.COMPENSATING, idle=True)
        h.journal.gate("c4").set()  # the charge now fails into the TSQ
        rec = await final(h, sid, timeout=10)
        domain, cid = await command_of(h, sid, "Charge")
        assert await command_status(h, domain, cid) is CommandStatus.CANCELLED
        await assert_consistent(h)
    assert rec.status is SagaStatus.COMPENSATED
    assert h.journal.of("c4") == ["Reserve", "Charge", "Release"]


async def test_a_pivot_that_succeeds_after_a_cancel_overtakes_it(dsn: str) -> None:
    """Nothing is undone while a step is out; once the pivot succeeded the saga can
    only go forward, so a cancel that arrived while the pivot ran comes too late."""
    async with running(dsn, PIVOTED) as h:
        started = await h.sagas.start_saga(
            PIVOTED, {"order_id": "c6", "behaviour": {"Charge": "gate"}}
        )
        sid = started.saga_id
        await wait_for(lambda: "Charge" in h.journal.of("c6"))
        await h.sagas.cancel_saga(sid)
        await status_is(h, sid, SagaStatus.COMPENSATING, idle=True)
        h.journal.gate("c6").set()
        rec = await final(h, sid)
        events = await h.sagas.saga_history(sid)
        await assert_consistent(h)
    assert rec.status is SagaStatus.COMPLETED
    assert h.journal.of("c6") == ["Reserve", "Charge", "Ship"]
    done = next(e for e in events if e.event_type == "SagaStepCompleted" and e.data.get("pivot"))
    assert done.data["cancel_overtaken"] is True


async def test_a_second_cancel_is_refused(dsn: str) -> None:
    async with running(dsn, PLAIN) as h:
        started = await h.sagas.start_saga(
            PLAIN, {"order_id": "c7", "behaviour": {"Reserve": "gate"}}
        )
        sid = started.saga_id
        await wait_for(lambda: "Reserve" in h.journal.of("c7"))
        await h.sagas.cancel_saga(sid, reason="first")
        await status_is(h, sid, SagaStatus.COMPENSATING, idle=True)
        with pytest.raises(InvalidStateError, match="is being cancelled already"):
            await h.sagas.cancel_saga(sid, reason="second")  # (before: silently nothing)
        h.journal.gate("c7").set()
        rec = await final(h, sid)
        events = await h.sagas.saga_history(sid)
    assert rec.status is SagaStatus.COMPENSATED
    assert [e.event_type for e in events].count("SagaCancelRequested") == 1


async def test_pause_then_resume_at_once_is_not_refused(dsn: str) -> None:
    # the resume is sent before the coordinator carried out the pause: the status
    # row does not say PAUSED yet, but a request is on its way (found by an
    # adversarial review: it was refused as 'not paused' and the saga stayed paused)
    async with running(dsn, PLAIN) as h:
        started = await h.sagas.start_saga(
            PLAIN, {"order_id": "c9", "behaviour": {"Reserve": "gate"}}
        )
        sid = started.saga_id
        await wait_for(lambda: "Reserve" in h.journal.of("c9"))
        for _ in range(3):
            await h.sagas.pause_saga(sid)
            await h.sagas.resume_saga(sid)
        h.journal.gate("c9").set()
        rec = await final(h, sid)
        events = await h.sagas.saga_history(sid)
    assert rec.status is SagaStatus.COMPLETED
    types = [e.event_type for e in events]
    assert types.count("SagaPaused") == types.count("SagaResumed") == 3


async def _has_event(h: Harness, saga_id: UUID, event_type: str) -> bool:
    return any(e.event_type == event_type for e in await h.sagas.saga_history(saga_id))


async def test_resume_then_pause_at_once_both_apply(dsn: str) -> None:
    # the status row still says PAUSED while the resume is on its way: the pause
    # is not refused for that, and the coordinator applies them in that order (one
    # flusher per saga: with two, the pause could be decided first and refused)
    async with running(dsn, PLAIN) as h:
        started = await h.sagas.start_saga(
            PLAIN, {"order_id": "c8", "behaviour": {"Reserve": "gate"}}
        )
        sid = started.saga_id
        await wait_for(lambda: "Reserve" in h.journal.of("c8"))
        await h.sagas.pause_saga(sid)
        await status_is(h, sid, SagaStatus.PAUSED, idle=True)
        await h.sagas.resume_saga(sid)
        await h.sagas.pause_saga(sid, reason="again")

        async def paused_twice() -> bool:
            events = await h.sagas.saga_history(sid)
            return [e.event_type for e in events].count("SagaPaused") == 2

        await wait_for(paused_twice)
        events = await h.sagas.saga_history(sid)
        rec = await status_is(h, sid, SagaStatus.PAUSED, idle=True)
        h.journal.gate("c8").set()
        await h.sagas.resume_saga(sid)
        await final(h, sid)
    types = [e.event_type for e in events]
    assert types[-3:] == ["SagaPaused", "SagaResumed", "SagaPaused"]
    assert events[-1].data["reason"] == "again"
    assert rec.current_steps == ("reserve",)


async def test_cancel_is_refused_once_ended(dsn: str) -> None:
    async with running(dsn, PLAIN) as h:
        started = await h.sagas.start_saga(PLAIN, {"order_id": "c5"})
        await final(h, started.saga_id)
        with pytest.raises(InvalidStateError, match="COMPLETED"):
            await h.sagas.cancel_saga(started.saga_id)
        with pytest.raises(InvalidStateError, match="COMPLETED"):
            await h.sagas.pause_saga(started.saga_id)


# -- pause and resume --------------------------------------------------------------------------


async def test_pause_records_outcomes_but_sends_nothing_until_resumed(dsn: str) -> None:
    async with running(dsn, PLAIN) as h:
        started = await h.sagas.start_saga(
            PLAIN, {"order_id": "p1", "behaviour": {"Reserve": "gate"}}
        )
        sid = started.saga_id
        await wait_for(lambda: "Reserve" in h.journal.of("p1"))
        await h.sagas.pause_saga(sid, reason="fraud check", operator="carol")
        await status_is(h, sid, SagaStatus.PAUSED, idle=True)
        with pytest.raises(InvalidStateError, match="is paused already"):
            await h.sagas.pause_saga(sid)  # again, nothing on its way: refused at once
        h.journal.gate("p1").set()

        async def reserved() -> bool:
            rec = await h.sagas.get_saga(sid)
            return rec is not None and "reserve" in rec.results

        await wait_for(reserved)
        paused = await status_is(h, sid, SagaStatus.PAUSED, idle=True)
        assert paused.current_steps == ()
        assert len(await commands_of(h, sid)) == 1  # the charge waits
        await h.sagas.resume_saga(sid, operator="carol")
        rec = await final(h, sid)
        events = await h.sagas.saga_history(sid)
        await assert_consistent(h)
    assert rec.status is SagaStatus.COMPLETED
    assert h.journal.of("p1") == ["Reserve", "Charge", "Ship"]
    types = [e.event_type for e in events]
    assert types.count("SagaPaused") == 1 and types.count("SagaResumed") == 1
    pause = events[types.index("SagaPaused")]
    assert pause.data["reason"] == "fraud check" and pause.data["operator"] == "carol"
    assert events[types.index("SagaResumed")].data["operator"] == "carol"


async def test_a_paused_saga_that_is_cancelled_compensates_once_resumed(dsn: str) -> None:
    async with running(dsn, PLAIN) as h:
        started = await h.sagas.start_saga(
            PLAIN, {"order_id": "p2", "behaviour": {"Charge": "gate"}}
        )
        sid = started.saga_id
        await wait_for(lambda: "Charge" in h.journal.of("p2"))
        await h.sagas.pause_saga(sid)
        await status_is(h, sid, SagaStatus.PAUSED, idle=True)
        await h.sagas.cancel_saga(sid)
        h.journal.gate("p2").set()
        await wait_for(lambda: _step_is(h, sid, "charge", "COMPLETED"))
        held = await status_is(h, sid, SagaStatus.PAUSED, idle=True)
        assert "Refund" not in h.journal.of("p2")
        assert held.state.compensating
        await h.sagas.resume_saga(sid)
        rec = await final(h, sid)
        await assert_consistent(h)
    assert rec.status is SagaStatus.COMPENSATED
    assert h.journal.of("p2") == ["Reserve", "Charge", "Refund", "Release"]


async def _step_is(h: Harness, saga_id: UUID, step: str, status: str) -> bool:
    rec = await h.sagas.get_saga(saga_id)
    return rec is not None and step in rec.state.steps and rec.state.steps[step].status == status


# -- parallel groups and retry overrides -------------------------------------------------------


@pytest.mark.parametrize("action", ["complete", "cancel"])
async def test_a_group_member_in_the_tsq_holds_the_compensation_of_its_group(
    dsn: str, action: str
) -> None:
    from saga_apps import PARALLEL

    async with running(dsn, PARALLEL) as h:
        started = await h.sagas.start_saga(
            PARALLEL,
            {"order_id": "g1", "behaviour": {"Charge": "business", "Email": "permanent"}},
        )
        sid = started.saga_id
        domain, cid = await in_tsq(h, sid, "Email")
        charge = await command_of(h, sid, "Charge")
        await wait_for(lambda: _command_is(h, *charge, CommandStatus.FAILED))
        rec = await status_is(h, sid, SagaStatus.WAITING_ON_OPERATOR, idle=True)
        assert rec.state.compensating  # the charge failed; the email's outcome is awaited
        assert "Release" not in h.journal.of("g1")
        if action == "complete":
            await h.bus.troubleshooting.complete(domain, cid)
        else:
            await h.bus.troubleshooting.cancel(domain, cid)
        rec = await final(h, sid)
        await assert_consistent(h)
    assert rec.status is SagaStatus.COMPENSATED
    undo = h.journal.of("g1")[3:]
    # a completed email is undone (an sms) before the reservation; a cancelled one is not
    assert undo == (["Sms", "Release"] if action == "complete" else ["Release"])


async def test_a_step_s_max_attempts_overrides_the_default(dsn: str) -> None:
    saga = Saga(
        "tries",
        steps=[
            Step("charge", domain="payments", command="Charge", data=_order, max_attempts=2),
        ],
    )
    async with running(dsn, saga) as h:
        started = await h.sagas.start_saga(
            saga, {"order_id": "r1", "behaviour": {"Charge": "transient"}}
        )
        domain, cid = await waiting_on_operator_after(h, started.saga_id, "Charge")
        record = await h.bus.get_command(domain, cid)
        await assert_consistent(h)
    assert record is not None and record.max_attempts == 2 and record.attempts == 2
    assert h.journal.of("r1") == ["Charge", "Charge"]


async def waiting_on_operator_after(
    h: Harness, saga_id: UUID, command_type: str
) -> tuple[str, UUID]:
    target = await in_tsq(h, saga_id, command_type)
    await status_is(h, saga_id, SagaStatus.WAITING_ON_OPERATOR, idle=True)
    return target


# -- a compensation that failed for good, settled by hand ---------------------------------------


async def _compensated_by_hand(h: Harness, saga_id: UUID) -> dict[str, Any]:
    events = await h.sagas.saga_history(saga_id)
    by_hand = [
        e.data
        for e in events
        if e.event_type == "SagaStepCompensated" and e.data.get("by_operator")
    ]
    assert len(by_hand) == 1, [e.event_type for e in events]
    return by_hand[0]


async def test_a_compensation_that_failed_a_business_rule_is_marked_compensated(
    dsn: str,
) -> None:
    async with running(dsn, PLAIN) as h:
        started = await h.sagas.start_saga(
            PLAIN, {"order_id": "m1", "behaviour": {"Ship": "business", "Refund": "business"}}
        )
        sid = started.saga_id
        rec = await status_is(h, sid, SagaStatus.COMPENSATION_FAILED, idle=True)
        assert rec.current_steps == ("charge",)
        domain, refund = await command_of(h, sid, "Refund")
        assert await command_status(h, domain, refund) is CommandStatus.FAILED  # final
        with pytest.raises(InvalidStateError, match="retry"):
            await h.bus.troubleshooting.retry(domain, refund)  # nothing an operator can do there
        assert "Release" not in h.journal.of("m1")
        await h.sagas.mark_compensated(sid, "charge", reason="refunded by phone", operator="ann")
        rec = await final(h, sid, timeout=10)
        data = await _compensated_by_hand(h, sid)
        await assert_consistent(h)
    assert rec.status is SagaStatus.COMPENSATED
    # the steps before it were compensated after it, in reverse order
    assert h.journal.of("m1") == ["Reserve", "Charge", "Ship", "Refund", "Release"]
    assert data == {
        "step": "charge",
        "command_id": str(refund),
        "by_operator": True,
        "reason": "refunded by phone",
        "operator": "ann",
        "source": "api",
    }


async def test_marking_a_compensation_in_the_tsq_cancels_its_command(dsn: str) -> None:
    async with running(dsn, PLAIN) as h:
        started = await h.sagas.start_saga(
            PLAIN, {"order_id": "m3", "behaviour": {"Ship": "business", "Refund": "tsq_once"}}
        )
        sid = started.saga_id
        domain, refund = await in_tsq(h, sid, "Refund")
        await status_is(h, sid, SagaStatus.COMPENSATION_FAILED, idle=True)
        await h.sagas.mark_compensated(sid, "charge", reason="refunded by phone")
        rec = await final(h, sid, timeout=10)
        data = await _compensated_by_hand(h, sid)
        cancelled = await h.bus.get_command(domain, refund)
        await assert_consistent(h)
    assert rec.status is SagaStatus.COMPENSATED
    assert cancelled is not None and cancelled.status is CommandStatus.CANCELLED
    # the refund's one attempt went to the TSQ; it was not retried
    assert h.journal.of("m3") == ["Reserve", "Charge", "Ship", "Refund", "Release"]
    # the saga's own event says who and why (the request is read before the reply)
    assert (data["command_id"], data["reason"]) == (str(refund), "refunded by phone")


async def test_mark_compensated_is_refused_while_a_retried_compensation_runs(dsn: str) -> None:
    async with running(dsn, PLAIN) as h:
        started = await h.sagas.start_saga(
            PLAIN,
            {"order_id": "m6", "behaviour": {"Ship": "business", "Refund": "tsq_then_gate"}},
        )
        sid = started.saga_id
        domain, refund = await in_tsq(h, sid, "Refund")
        await h.bus.troubleshooting.retry(domain, refund)
        await wait_for(lambda: h.journal.of("m6").count("Refund") == 2, timeout=10)
        with pytest.raises(InvalidStateError, match="is PENDING again: wait for its outcome"):
            await h.sagas.mark_compensated(sid, "charge")
        h.journal.gate("m6").set()  # the retry succeeds: it decides
        rec = await final(h, sid, timeout=10)
        events = await h.sagas.saga_history(sid)
        await assert_consistent(h)
    assert rec.status is SagaStatus.COMPENSATED
    assert not any(e.data.get("by_operator") for e in events)
    assert h.journal.of("m6") == ["Reserve", "Charge", "Ship", "Refund", "Refund", "Release"]


async def test_mark_compensated_is_refused_unless_the_compensation_failed(dsn: str) -> None:
    async with running(dsn, PLAIN) as h:
        failing = await h.sagas.start_saga(
            PLAIN, {"order_id": "m4", "behaviour": {"Ship": "business", "Refund": "business"}}
        )
        await status_is(h, failing.saga_id, SagaStatus.COMPENSATION_FAILED, idle=True)
        done = await h.sagas.start_saga(PLAIN, {"order_id": "m5"})
        await final(h, done.saga_id)
        before = await h.sagas.saga_history(failing.saga_id)
        for step, message in (
            ("reserve", "'reserve' of saga .* is COMPLETED, not COMPENSATION_FAILED"),
            ("ship", "'ship' of saga .* is FAILED, not COMPENSATION_FAILED"),
            ("nope", "has no started step 'nope'"),
        ):
            with pytest.raises(InvalidStateError, match=message):
                await h.sagas.mark_compensated(failing.saga_id, step)
        with pytest.raises(InvalidStateError, match="COMPLETED: it has ended"):
            await h.sagas.mark_compensated(done.saga_id, "charge")
        with pytest.raises(SagaNotFoundError):
            await h.sagas.mark_compensated(uuid4(), "charge")
        for bad, message in (
            (7, "step must be a string, got 7"),
            ("", "step must not be empty"),
            ("x" * 129, "step must be at most 128 characters"),
        ):
            with pytest.raises(ValidationError, match=message):
                await h.sagas.mark_compensated(failing.saga_id, bad)  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="reason"):
            await h.sagas.mark_compensated(failing.saga_id, "charge", reason=3)  # type: ignore[arg-type]
        after = await h.sagas.saga_history(failing.saga_id)
        rec = await h.sagas.get_saga(failing.saga_id)
    # nothing was asked of the coordinator: no event, and the saga still waits
    assert len(after) == len(before)
    assert rec is not None and rec.status is SagaStatus.COMPENSATION_FAILED
