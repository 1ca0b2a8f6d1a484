"""The saga decider and fold as pure functions: no database, no queues."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest

from commandbus import (
    Compensation,
    InvalidStateError,
    Parallel,
    Saga,
    SagaDefinitionError,
    SagaStatus,
    Step,
    StepStatus,
)
from commandbus.sagas.decide import Decider
from commandbus.sagas.outgoing import command_id_for
from commandbus.sagas.state import from_json, to_json

A = Step("a", domain="da", command="A", compensation=Compensation("UndoA"))
B = Step(
    "b", domain="db", command="B", compensation=Compensation("UndoB"), timeout=timedelta(seconds=5)
)
C = Step("c", domain="dc", command="C")
LINE = Saga("line", steps=[A, B, C])


def start(saga: Saga = LINE, data: dict[str, Any] | None = None) -> Decider:
    d = Decider(saga, None, max_payload_bytes=1 << 20, default_max_attempts=3)
    sid = uuid4()
    d.start(saga_id=sid, input=data or {"x": 1}, correlation_id=sid, idempotency_key=None)
    return d


def again(d: Decider) -> Decider:
    """A fresh decider on the stored state (as the coordinator loads it)."""
    assert d.state is not None
    return Decider(
        d.saga, from_json(to_json(d.state)), max_payload_bytes=1 << 20, default_max_attempts=3
    )


def reply(
    d: Decider,
    step: str,
    outcome: str = "SUCCESS",
    result: Any = None,
    msg: int = 1,
    compensation: bool = False,
) -> Decider:
    d = again(d)
    assert d.state is not None
    s = d.state.steps[step]
    cid = s.compensation_id if compensation else s.command_id
    d.reply(
        msg,
        {
            "command_id": str(cid),
            "outcome": outcome,
            "result": result,
            "error": None if outcome == "SUCCESS" else {"code": "X", "message": "no"},
        },
    )
    return d


def sent(d: Decider) -> list[str]:
    return [c.command_type for c in d.commands]


def types(d: Decider) -> list[str]:
    return [e.event_type for e in d.events]


def test_start_sends_the_first_step_with_a_derived_id() -> None:
    d = start()
    assert types(d) == ["SagaStarted", "SagaStepStarted"]
    assert sent(d) == ["A"]
    assert d.state is not None
    assert d.commands[0].command_id == command_id_for(d.state.saga_id, 0)
    assert d.commands[0].reply_to == "commandbus_sagas"
    assert d.state.status is SagaStatus.RUNNING


def test_results_pass_forward_to_data_builders() -> None:
    seen: list[Any] = []

    def build(ctx: Any) -> dict[str, Any]:
        seen.append((dict(ctx.input), dict(ctx.results)))
        return {"from_a": ctx.results["a"]["v"]}

    saga = Saga(
        "fwd",
        steps=[
            Step("a", domain="da", command="A"),
            Step("b", domain="db", command="B", data=build),
        ],
    )
    d = reply(start(saga, {"k": 2}), "a", result={"v": 7})
    assert sent(d) == ["B"]
    assert seen == [({"k": 2}, {"a": {"v": 7}})]
    assert '"from_a":7' in d.commands[0].message


def test_a_timer_is_set_with_the_step_and_deleted_by_its_outcome() -> None:
    d = reply(start(), "a")
    assert [t.step for t in d.timers] == ["b"]
    d.timers[0].event_data["timer_msg_id"] = 99  # what the store allocates
    assert d.state is not None
    d.state.steps["b"].timer_msg_id = 99
    d2 = reply(d, "b", msg=5)
    assert 99 in d2.delete and 5 in d2.delete


def test_failure_compensates_in_reverse_one_at_a_time() -> None:
    d = reply(reply(start(), "a"), "b")
    d = reply(d, "c", "FAILED")
    assert types(d) == ["SagaStepFailed", "SagaCompensationStarted", "SagaStepCompensating"]
    assert sent(d) == ["UndoB"]  # only the last completed step first
    d = reply(d, "b", compensation=True)
    assert sent(d) == ["UndoA"]
    d = reply(d, "a", compensation=True)
    assert types(d)[-1] == "SagaCompensated"
    assert d.state is not None and d.state.status is SagaStatus.COMPENSATED


def test_a_failed_compensation_stops_and_an_operator_success_resumes_it() -> None:
    d = reply(reply(start(), "a"), "b", "FAILED")
    assert sent(d) == ["UndoA"]
    d = reply(d, "a", "TROUBLESHOOTING", compensation=True)
    assert d.state is not None and d.state.status is SagaStatus.COMPENSATION_FAILED
    d = reply(d, "a", "SUCCESS", compensation=True)
    assert d.state is not None and d.state.status is SagaStatus.COMPENSATED


def test_a_compensation_failed_for_good_is_marked_compensated_by_an_operator() -> None:
    d = reply(reply(reply(start(), "a"), "b"), "c", "FAILED")
    d = reply(d, "b", "FAILED", compensation=True)  # a business failure: final
    assert d.state is not None and d.state.status is SagaStatus.COMPENSATION_FAILED
    assert not sent(d)
    d = again(d)
    d.control(9, {"action": "mark_compensated", "step": "b", "reason": "by phone", "source": "cli"})
    assert types(d) == ["SagaStepCompensated", "SagaStepCompensating"]
    assert d.events[0].data["by_operator"] is True and d.events[0].data["source"] == "cli"
    assert sent(d) == ["UndoA"] and d.delete == [9]
    # a second request (or one for a step whose compensation did not fail) is
    # recorded as refused and changes nothing
    d = again(d)
    d.control(10, {"action": "mark_compensated", "step": "b"})
    d.control(11, {"action": "mark_compensated", "step": "zz"})
    assert types(d) == ["SagaReplyIgnored", "SagaReplyIgnored"]
    assert "COMPENSATED, not COMPENSATION_FAILED" in d.events[0].data["reason"]
    assert "no started step 'zz'" in d.events[1].data["reason"]
    assert not sent(d)
    d = reply(d, "a", compensation=True)
    assert d.state is not None and d.state.status is SagaStatus.COMPENSATED


def test_stale_and_duplicate_replies_change_nothing() -> None:
    d = reply(start(), "a")
    dup = reply(d, "a")
    assert types(dup) == ["SagaReplyIgnored"] and not dup.commands
    stranger = again(d)
    stranger.reply(3, {"command_id": str(UUID(int=1)), "outcome": "SUCCESS"})
    assert types(stranger) == ["SagaReplyIgnored"]
    assert stranger.delete == [3]


def test_a_parallel_group_joins_and_compensates_completed_members_together() -> None:
    saga = Saga(
        "par",
        steps=[
            A,
            Parallel(
                "g",
                Step("p", domain="dp", command="P", compensation=Compensation("UndoP")),
                Step("q", domain="dq", command="Q", compensation=Compensation("UndoQ")),
            ),
            C,
        ],
    )
    d = reply(start(saga), "a")
    assert sorted(sent(d)) == ["P", "Q"]
    d = reply(d, "p")
    assert not d.commands  # waits for q
    ok = reply(d, "q")
    assert sent(ok) == ["C"]
    bad = reply(d, "q", "FAILED")
    assert sent(bad) == ["UndoP"]  # p completed: undone first; q failed: nothing to undo


def test_a_failure_waits_for_steps_still_out_before_compensating() -> None:
    saga = Saga(
        "par",
        steps=[
            A,
            Parallel(
                "g",
                Step("p", domain="dp", command="P", compensation=Compensation("UndoP")),
                Step("q", domain="dq", command="Q"),
            ),
        ],
    )
    d = reply(reply(start(saga), "a"), "q", "FAILED")
    assert not d.commands  # p is still out
    d = reply(d, "p")
    assert sent(d) == ["UndoP"]


def test_after_the_pivot_failures_go_forward() -> None:
    saga = Saga("piv", steps=[A, Step("b", domain="db", command="B", pivot=True), C])
    d = reply(reply(start(saga), "a"), "b")
    assert d.state is not None and d.state.pivoted
    tsq = reply(d, "c", "TROUBLESHOOTING")
    assert tsq.state is not None and tsq.state.status is SagaStatus.WAITING_ON_OPERATOR
    failed = reply(d, "c", "FAILED")
    assert failed.state is not None and failed.state.status is SagaStatus.FAILED
    assert not failed.commands
    with pytest.raises(InvalidStateError, match="pivot"):
        again(d).cancel(None)


def test_a_timeout_fails_the_step_and_a_late_success_is_compensated_too() -> None:
    d = reply(start(), "a")
    d.timers[0].event_data["timer_msg_id"] = 42
    assert d.state is not None
    d.state.steps["b"].timer_msg_id = 42
    b_id = d.state.steps["b"].command_id
    t = again(d)
    t.timer(42, {"step": "b", "command_id": str(b_id), "seconds": 5})
    assert types(t)[:2] == ["SagaStepTimedOut", "SagaCompensationStarted"]
    assert sent(t) == ["UndoA"]
    late = reply(t, "b")  # b completed after all
    assert late.state is not None and late.state.steps["b"].status is StepStatus.COMPLETED
    done = reply(late, "a", compensation=True)
    assert sent(done) == ["UndoB"]


def test_a_stale_timer_is_only_deleted() -> None:
    d = reply(reply(start(), "a"), "b")
    assert d.state is not None
    t = again(d)
    t.timer(42, {"step": "b", "command_id": str(d.state.steps["b"].command_id)})
    assert t.events == [] and t.delete == [42]


def test_a_pause_cancel_or_resume_that_no_longer_applies_is_recorded_as_refused() -> None:
    # two operators asked at once: the client let both through, the saga says so
    d = again(start())
    d.control(1, {"action": "pause", "reason": "check"})
    d.control(2, {"action": "pause"})
    d.control(3, {"action": "cancel"})
    d.control(4, {"action": "cancel"})
    d.control(5, {"action": "resume"})
    d.control(6, {"action": "resume"})
    assert types(d) == [
        "SagaPaused",
        "SagaReplyIgnored",
        "SagaCancelRequested",
        "SagaReplyIgnored",
        "SagaResumed",
        "SagaReplyIgnored",
    ]
    assert d.events[1].data["reason"].endswith("is paused already")
    assert d.events[3].data["reason"].endswith("is being cancelled already")
    assert d.events[5].data["reason"].endswith("not paused")  # (before: nothing at all)
    assert d.delete == [1, 2, 3, 4, 5, 6]


def test_a_data_builder_that_raises_fails_the_step_and_compensates() -> None:
    def boom(ctx: Any) -> dict[str, Any]:
        raise KeyError("missing")

    saga = Saga("b", steps=[A, Step("b", domain="db", command="B", data=boom)])
    d = reply(start(saga), "a")
    assert "SagaCompensationStarted" in types(d)
    assert sent(d) == ["UndoA"]
    assert d.state is not None and d.state.last_error is not None
    assert d.state.last_error["code"] == "DATA_BUILDER_FAILED"


def test_pause_holds_the_next_stage_and_resume_sends_it() -> None:
    d = again(start())
    d.pause("look")
    d = reply(d, "a")
    assert not d.commands and d.state is not None and d.state.status is SagaStatus.PAUSED
    r = again(d)
    r.resume()
    assert sent(r) == ["B"]


def test_cancel_compensates_once_the_running_step_answers() -> None:
    d = reply(start(), "a")
    c = again(d)
    c.cancel("customer asked")
    assert not c.commands  # b is still out
    c = reply(c, "b")
    assert sent(c) == ["UndoB"]


def test_a_missing_definition_blocks_once_and_decides_nothing() -> None:
    d = reply(start(), "a")
    assert d.state is not None
    blind = Decider(
        None, from_json(to_json(d.state)), max_payload_bytes=1 << 20, default_max_attempts=3
    )
    assert blind.blocked(7, "no v1") and types(blind) == ["SagaBlocked"]
    again_blind = Decider(None, blind.state, max_payload_bytes=1 << 20, default_max_attempts=3)
    assert not again_blind.blocked(8, "no v1")


def test_state_round_trips_through_json() -> None:
    d = reply(reply(start(), "a", result={"r": [1, 2]}), "b", "FAILED")
    assert d.state is not None
    assert from_json(to_json(d.state)) == d.state


@pytest.mark.parametrize(
    ("steps", "match"),
    [
        ([], "no steps"),
        ([A, A], "used twice"),
        ([Step("x", domain="Bad Domain", command="X")], "domain"),
        ([Step("x", domain="d", command="X", data=42)], "data"),  # type: ignore[arg-type]
        (
            [Step("x", domain="d", command="X", pivot=True, compensation=Compensation("U"))],
            "never run",
        ),
        ([Step("x", domain="d", command="X", pivot=True), A], "never run"),
        ([Step("x", domain="d", command="X", timeout=timedelta(0))], "timeout"),
        ([Step("x", domain="d", command="X", max_attempts=0)], "max_attempts"),
        ([Step("x", domain="d", command="X", pivot=True, timeout=timedelta(1))], "pivot"),
        ([Parallel("g")], "no steps"),
        ([Parallel("g", Step("x", domain="d", command="X", pivot=True))], "pivot"),
        (["not a step"], "Step or Parallel"),
    ],
)
def test_definitions_are_checked_when_built(steps: list[Any], match: str) -> None:
    with pytest.raises(SagaDefinitionError, match=match):
        Saga("s", steps=steps)


def test_saga_name_and_version_are_checked() -> None:
    with pytest.raises(SagaDefinitionError, match="saga name"):
        Saga("", steps=[C])
    with pytest.raises(SagaDefinitionError, match="version"):
        Saga("s", steps=[C], version=True)  # type: ignore[arg-type]
