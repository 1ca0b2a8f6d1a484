"""Replies the coordinator must not act on twice, a pivot, timers and data builders
that raise: each scenario ends with the saga rows equal to a replay of the events."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

import attrs

from commandbus import Compensation, Saga, SagaStatus, Step
from saga_apps import (
    Harness,
    assert_consistent,
    commands_of,
    final,
    history,
    running,
    status_is,
)
from support import wait_for


def _order(ctx: Any) -> dict[str, Any]:
    return {"order_id": ctx.input["order_id"], "behaviour": ctx.input.get("behaviour", {})}


def reserve(**kw: Any) -> Step:
    return Step(
        "reserve",
        domain="inventory",
        command="Reserve",
        data=_order,
        compensation=Compensation("Release", data=_order),
        **kw,
    )


PLAIN = Saga(
    "plain",
    steps=[
        reserve(),
        Step(
            "charge",
            domain="payments",
            command="Charge",
            data=_order,
            compensation=Compensation("Refund", data=_order),
        ),
        Step("ship", domain="shipping", command="Ship", data=_order),
    ],
)

PIVOTED = Saga(
    "pivoted",
    steps=[
        reserve(),
        Step("charge", domain="payments", command="Charge", data=_order, pivot=True),
        Step(
            "ship",
            domain="shipping",
            command="Ship",
            data=_order,
            timeout=timedelta(milliseconds=300),
        ),
    ],
)

QUICK_TIMEOUT = Saga(
    "quick",
    steps=[
        reserve(),
        Step(
            "charge",
            domain="payments",
            command="Charge",
            data=_order,
            compensation=Compensation("Refund", data=_order),
            timeout=timedelta(milliseconds=300),
        ),
    ],
)


def _boom(ctx: Any) -> dict[str, Any]:
    return {"card": ctx.results["no such step"]}


BUILDERS = Saga(
    "builders",
    steps=[
        reserve(),
        Step(
            "charge",
            domain="payments",
            command="Charge",
            data=lambda ctx: _boom(ctx) if ctx.input.get("boom") == "charge" else _order(ctx),
            compensation=Compensation(
                "Refund",
                data=lambda ctx: _boom(ctx) if ctx.input.get("boom") == "refund" else _order(ctx),
            ),
        ),
        Step(
            "ship",
            domain="shipping",
            command="Ship",
            data=lambda ctx: {"bad": {1, 2}} if ctx.input.get("boom") == "ship" else _order(ctx),
        ),
    ],
)

ALL = (PLAIN, PIVOTED, QUICK_TIMEOUT, BUILDERS)


async def inject(h: Harness, body: dict[str, Any]) -> None:
    """A message in the saga queue, as a redelivery or a stray writer would leave it."""
    async with h.bus.pool.connection() as c:
        await c.execute(
            "INSERT INTO pgmq.q_commandbus_sagas (vt, message, headers)"
            " VALUES (clock_timestamp(), %s::jsonb, '{}'::jsonb)",
            (json.dumps(body),),
        )


async def command_ids(h: Harness, saga_id: UUID) -> dict[str, tuple[str, UUID]]:
    """command type -> (domain, command id) of the saga's commands."""
    async with h.bus.pool.connection() as c:
        cur = await c.execute(
            "SELECT command_type, domain, command_id FROM commandbus.command WHERE saga_id = %s",
            (saga_id,),
        )
        return {r[0]: (r[1], r[2]) for r in await cur.fetchall()}


def reply_to(
    saga_id: UUID, cmds: dict[str, tuple[str, UUID]], command_type: str, outcome: str, **extra: Any
) -> dict[str, Any]:
    """A reply for the saga's command of this type."""
    domain, command_id = cmds[command_type]
    return reply(saga_id, domain, command_type, command_id, outcome, **extra)


def reply(
    saga_id: UUID, domain: str, command_type: str, command_id: Any, outcome: str, **extra: Any
) -> dict[str, Any]:
    return {
        "command_id": str(command_id),
        "domain": domain,
        "command_type": command_type,
        "correlation_id": str(saga_id),
        "saga_id": str(saga_id),
        "batch_id": None,
        "outcome": outcome,
        "result": extra.get("result"),
        "error": extra.get("error"),
    }


async def queue_empty(h: Harness) -> bool:
    async with h.bus.pool.connection() as c:
        cur = await c.execute("SELECT count(*) FROM pgmq.q_commandbus_sagas")
        row = await cur.fetchone()
    return row == (0,)


# -- redelivered and stale replies -------------------------------------------------------------


async def test_redelivered_and_stale_replies_to_an_ended_saga_change_nothing(dsn: str) -> None:
    async with running(dsn, *ALL) as h:
        ok = await h.sagas.start_saga(PLAIN, {"order_id": "d1"})
        undone = await h.sagas.start_saga(
            PLAIN, {"order_id": "d2", "behaviour": {"Ship": "business"}}
        )
        done = await final(h, ok.saga_id)
        comp = await final(h, undone.saga_id)
        assert done.status is SagaStatus.COMPLETED and comp.status is SagaStatus.COMPENSATED
        cmds = await command_ids(h, ok.saga_id)
        ccmds = await command_ids(h, undone.saga_id)
        sid, cid = ok.saga_id, undone.saga_id
        stray = [
            # the reserve's reply delivered again
            reply_to(sid, cmds, "Reserve", "SUCCESS", result={"reservation": "other"}),
            # a failure for a step that succeeded long ago
            reply_to(sid, cmds, "Charge", "FAILED", error={"code": "X", "message": "late"}),
            # a TSQ notice for a completed step
            reply_to(sid, cmds, "Ship", "TROUBLESHOOTING"),
            # a command this saga never sent
            reply(sid, "payments", "Charge", uuid4(), "SUCCESS"),
            # no command id at all
            {"saga_id": str(sid), "outcome": "SUCCESS"},
            # an operator request the saga cannot carry out any more
            {"kind": "control", "saga_id": str(sid), "action": "cancel"},
            {"kind": "control", "saga_id": str(sid), "action": "explode"},
        ]
        cstray = [
            # a compensation's reply delivered again, and a failure for it
            reply_to(cid, ccmds, "Refund", "SUCCESS"),
            reply_to(cid, ccmds, "Release", "FAILED"),
            # the failed step's reply again
            reply_to(cid, ccmds, "Ship", "FAILED"),
            # and a success for it: a step that failed stays failed
            reply_to(cid, ccmds, "Ship", "SUCCESS"),
        ]
        # a stale timer (the command id it names is not the step's), a reply for
        # no saga at all, and messages that are not for a saga
        noise = [
            {"kind": "timer", "saga_id": str(sid), "step": "ship", "command_id": str(uuid4())},
            reply(uuid4(), "payments", "Charge", uuid4(), "SUCCESS"),
            {"hello": "world"},
            {"saga_id": "not-a-uuid", "outcome": "SUCCESS"},
        ]
        for body in [*stray, *cstray, *noise]:
            await inject(h, body)
        await wait_for(lambda: queue_empty(h), timeout=10)
        after = await h.sagas.get_saga(sid)
        cafter = await h.sagas.get_saga(cid)
        events = await history(h, sid)
        cevents = await history(h, cid)
        assert len(await commands_of(h, sid)) == 3  # nothing new was sent
        assert len(await commands_of(h, cid)) == 5
        await assert_consistent(h)
    # each was recorded as ignored, and the state did not move
    assert events[-len(stray) :] == [("SagaReplyIgnored", None)] * len(stray)
    assert cevents[-len(cstray) :] == [("SagaReplyIgnored", None)] * len(cstray)
    for before, now in ((done, after), (comp, cafter)):
        assert now is not None
        assert now.state == before.state
        assert now.status is before.status
        assert now.results == before.results
        assert now.ended_at == before.ended_at
        assert now.last_error == before.last_error
    assert after.version == done.version + len(stray)
    assert cafter.version == comp.version + len(cstray)
    assert h.journal.of("d1") == ["Reserve", "Charge", "Ship"]
    assert h.journal.of("d2") == ["Reserve", "Charge", "Ship", "Refund", "Release"]


async def test_a_stale_reply_while_running_does_not_move_the_saga(dsn: str) -> None:
    async with running(dsn, *ALL) as h:
        started = await h.sagas.start_saga(
            PLAIN, {"order_id": "m1", "behaviour": {"Charge": "gate"}}
        )
        sid = started.saga_id
        await wait_for(lambda: "Charge" in h.journal.of("m1"))
        rec = await status_is(h, sid, SagaStatus.RUNNING, idle=True)
        assert rec.current_steps == ("charge",)
        cmds = await command_ids(h, sid)
        await inject(h, reply_to(sid, cmds, "Reserve", "SUCCESS", result={"reservation": "2"}))
        await inject(h, reply_to(sid, cmds, "Reserve", "FAILED"))
        await wait_for(lambda: queue_empty(h), timeout=10)
        during = await h.sagas.get_saga(sid)
        h.journal.gate("m1").set()
        done = await final(h, sid)
        await assert_consistent(h)
    assert during.status is SagaStatus.RUNNING and during.current_steps == ("charge",)
    assert during.state.steps == rec.state.steps
    assert done.status is SagaStatus.COMPLETED
    assert done.results["reserve"] == {"reservation": "r-m1"}
    assert h.journal.of("m1") == ["Reserve", "Charge", "Ship"]


# -- the pivot ---------------------------------------------------------------------------------


async def test_a_failure_after_the_pivot_fails_the_saga_and_compensates_nothing(
    dsn: str,
) -> None:
    async with running(dsn, *ALL) as h:
        started = await h.sagas.start_saga(
            PIVOTED, {"order_id": "v1", "behaviour": {"Ship": "business"}}
        )
        rec = await final(h, started.saga_id)
        events = await history(h, started.saga_id)
        await assert_consistent(h)
    assert rec.status is SagaStatus.FAILED
    assert rec.last_error is not None and error(rec)["code"] == "REFUSED"
    assert h.journal.of("v1") == ["Reserve", "Charge", "Ship"]
    types = [t for t, _s in events]
    assert "SagaCompensationStarted" not in types and "SagaStepCompensating" not in types
    assert types[-2:] == ["SagaStepFailed", "SagaFailed"]
    assert rec.state.pivoted


async def test_a_failure_before_the_pivot_still_compensates(dsn: str) -> None:
    async with running(dsn, *ALL) as h:
        started = await h.sagas.start_saga(
            PIVOTED, {"order_id": "v2", "behaviour": {"Charge": "business"}}
        )
        rec = await final(h, started.saga_id)
        await assert_consistent(h)
    assert rec.status is SagaStatus.COMPENSATED
    assert h.journal.of("v2") == ["Reserve", "Charge", "Release"]


async def test_a_timeout_after_the_pivot_marks_the_step_overdue_and_waits(dsn: str) -> None:
    async with running(dsn, *ALL) as h:
        started = await h.sagas.start_saga(
            PIVOTED, {"order_id": "v3", "behaviour": {"Ship": "gate"}}
        )
        sid = started.saga_id

        async def overdue() -> bool:
            rec = await h.sagas.get_saga(sid)
            return rec is not None and "ship" in rec.state.steps and rec.state.steps["ship"].overdue

        await wait_for(overdue, timeout=10)
        rec = await h.sagas.get_saga(sid)
        assert rec.status is SagaStatus.RUNNING and rec.current_steps == ("ship",)
        h.journal.gate("v3").set()
        done = await final(h, sid)
        events = await history(h, sid)
        await assert_consistent(h)
    assert done.status is SagaStatus.COMPLETED
    assert ("SagaStepTimedOut", "ship") in events
    assert h.journal.of("v3") == ["Reserve", "Charge", "Ship"]


# -- timers ------------------------------------------------------------------------------------


async def test_a_step_that_succeeds_after_its_timeout_is_compensated_too(dsn: str) -> None:
    async with running(dsn, *ALL) as h:
        started = await h.sagas.start_saga(
            QUICK_TIMEOUT, {"order_id": "t1", "behaviour": {"Charge": "gate"}}
        )
        sid = started.saga_id
        first = await final(h, sid)
        assert first.status is SagaStatus.COMPENSATED
        assert h.journal.of("t1") == ["Reserve", "Charge", "Release"]
        h.journal.gate("t1").set()  # the charge goes through after all

        async def refunded() -> bool:
            return "Refund" in h.journal.of("t1")

        await wait_for(refunded, timeout=10)
        rec = await status_is(h, sid, SagaStatus.COMPENSATED, idle=True)
        events = await history(h, sid)
        await assert_consistent(h)
    # both completed steps were undone
    assert {n: s.status.value for n, s in rec.state.steps.items()} == {
        "reserve": "COMPENSATED",
        "charge": "COMPENSATED",
    }
    assert ("SagaStepTimedOut", "charge") in events
    assert [t for t, _s in events].count("SagaCompensated") == 2
    assert h.journal.of("t1") == ["Reserve", "Charge", "Release", "Refund"]


async def test_a_reply_cancels_its_timer_in_the_same_transaction(dsn: str) -> None:
    async with running(dsn, *ALL) as h:
        started = await h.sagas.start_saga(QUICK_TIMEOUT, {"order_id": "t2"})
        rec = await final(h, started.saga_id)
        # the timer is gone with the reply that made it pointless
        assert await queue_empty(h)
        await assert_consistent(h)
        events = await h.sagas.saga_history(started.saga_id)
    assert rec.status is SagaStatus.COMPLETED
    timer = next(e.data["timer_msg_id"] for e in events if e.data.get("step") == "charge")
    assert isinstance(timer, int)
    assert "SagaStepTimedOut" not in [e.event_type for e in events]


def error(rec: Any) -> dict[str, Any]:
    assert rec.last_error is not None
    return dict(rec.last_error)


# -- data builders -----------------------------------------------------------------------------


async def test_a_data_builder_that_raises_fails_its_step_and_compensates(dsn: str) -> None:
    async with running(dsn, *ALL) as h:
        started = await h.sagas.start_saga(BUILDERS, {"order_id": "b1", "boom": "charge"})
        rec = await final(h, started.saga_id)
        events = await history(h, started.saga_id)
        await assert_consistent(h)
    assert rec.status is SagaStatus.COMPENSATED
    assert h.journal.of("b1") == ["Reserve", "Release"]
    assert rec.last_error is not None
    assert error(rec)["code"] == "DATA_BUILDER_FAILED"
    assert "'charge'" in error(rec)["message"]
    assert "no such step" in error(rec)["message"]
    assert ("SagaStepStarted", "charge") not in events


async def test_data_that_is_not_json_fails_the_step(dsn: str) -> None:
    async with running(dsn, *ALL) as h:
        started = await h.sagas.start_saga(BUILDERS, {"order_id": "b2", "boom": "ship"})
        rec = await final(h, started.saga_id)
        await assert_consistent(h)
    assert rec.status is SagaStatus.COMPENSATED
    assert h.journal.of("b2") == ["Reserve", "Charge", "Refund", "Release"]
    assert error(rec)["code"] == "DATA_BUILDER_FAILED"
    assert "JSON" in error(rec)["message"]


async def test_a_first_step_that_cannot_be_built_ends_the_saga_at_once(dsn: str) -> None:
    def a_list(ctx: Any) -> Any:
        return [1]

    saga = Saga("first", steps=[Step("a", domain="inventory", command="Reserve", data=a_list)])
    async with running(dsn, *ALL, saga) as h:
        started = await h.sagas.start_saga(saga, {"order_id": "b3"})
        rec = await h.sagas.get_saga(started.saga_id)
        assert await commands_of(h, started.saga_id) == []
        await assert_consistent(h)
    assert rec is not None and rec.status is SagaStatus.COMPENSATED
    assert "not a mapping" in error(rec)["message"]


async def test_a_compensation_that_cannot_be_built_is_compensation_failed(dsn: str) -> None:
    async with running(dsn, *ALL) as h:
        started = await h.sagas.start_saga(
            BUILDERS, {"order_id": "b4", "boom": "refund", "behaviour": {"Ship": "business"}}
        )
        rec = await status_is(h, started.saga_id, SagaStatus.COMPENSATION_FAILED, idle=True)
        await assert_consistent(h)
        # no command to act on: an operator who did the refund by hand says so
        await h.sagas.mark_compensated(started.saga_id, "charge")
        done = await final(h, started.saga_id, timeout=10)
        by_hand = [
            e.data
            for e in await h.sagas.saga_history(started.saga_id)
            if e.event_type == "SagaStepCompensated" and e.data.get("by_operator")
        ]
        await assert_consistent(h)
    assert error(rec)["code"] == "DATA_BUILDER_FAILED"
    assert done.status is SagaStatus.COMPENSATED
    assert h.journal.of("b4") == ["Reserve", "Charge", "Ship", "Release"]
    assert len(by_hand) == 1 and by_hand[0]["command_id"] is None  # never sent


# -- a missing status row ----------------------------------------------------------------------


async def test_a_saga_whose_status_row_is_gone_is_replayed_from_its_events(dsn: str) -> None:
    async with running(dsn, *ALL) as h:
        ended = await h.sagas.start_saga(PLAIN, {"order_id": "g2"})
        await final(h, ended.saga_id)
        running_one = await h.sagas.start_saga(
            PLAIN, {"order_id": "g1", "behaviour": {"Charge": "gate"}}
        )
        await wait_for(lambda: "Charge" in h.journal.of("g1"))
        await status_is(h, running_one.saga_id, SagaStatus.RUNNING, idle=True)
        cmds = await command_ids(h, ended.saga_id)
        async with h.bus.pool.connection() as c:
            await c.execute("DELETE FROM commandbus.saga")
        # a reply for each: the coordinator rebuilds the state from the events
        await inject(h, reply_to(ended.saga_id, cmds, "Ship", "SUCCESS"))
        h.journal.gate("g1").set()
        rec = await final(h, running_one.saga_id)
        await wait_for(lambda: queue_empty(h), timeout=10)
        again = await h.sagas.get_saga(ended.saga_id)
        await assert_consistent(h)
    assert rec.status is SagaStatus.COMPLETED
    assert again is not None and again.status is SagaStatus.COMPLETED


async def test_a_stale_kept_state_is_caught_by_the_version_check_and_decided_again(
    dsn: str,
) -> None:
    """The coordinator keeps the states it committed; one that went stale (here: set
    back a version by hand, as another coordinator's transition would leave it) is
    refused by the expected-version check, reloaded and decided again."""
    async with running(dsn, PLAIN) as h:
        started = await h.sagas.start_saga(
            PLAIN, {"order_id": "k1", "behaviour": {"Charge": "gate"}}
        )
        await wait_for(lambda: "Charge" in h.journal.of("k1"))
        await status_is(h, started.saga_id, SagaStatus.RUNNING, idle=True)
        kept = h.coordinator._states.get(started.saga_id)
        assert kept is not None  # the first step's transition was kept
        record = await h.sagas.get_saga(started.saga_id)
        assert record is not None and kept.version == record.version
        h.coordinator._states.put(started.saga_id, attrs.evolve(kept, version=kept.version - 1))
        conflicts = h.coordinator.stats.conflicts
        h.journal.gate("k1").set()
        rec = await final(h, started.saga_id)
        assert h.coordinator.stats.conflicts > conflicts
        events = await history(h, started.saga_id)
        await assert_consistent(h)
    assert rec.status is SagaStatus.COMPLETED
    completed = [step for t, step in events if t == "SagaStepCompleted"]
    assert completed == ["reserve", "charge", "ship"]  # each step once, in order
