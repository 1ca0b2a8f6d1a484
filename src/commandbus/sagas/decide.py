"""Deciding a saga's next transition: pure Python, no I/O.

A :class:`Decider` takes a saga's state and one input at a time (a start, a
command's reply, a timer, an operator's action) and emits the events that input
causes, plus what must commit with them: the commands to send (next steps or
compensations), the timers to set and the queue messages to delete (the consumed
reply, dead timers). Each event is applied to the state as it is emitted (the fold).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from uuid import UUID

from commandbus import event_types as ev
from commandbus.codec import dumps_limited
from commandbus.engine.commands.envelope import (
    REPLY_CANCELLED,
    REPLY_FAILED,
    REPLY_SUCCESS,
    REPLY_TROUBLESHOOTING,
)
from commandbus.engine.commands.store import OutgoingCommand
from commandbus.errors import InvalidStateError
from commandbus.models import NewEvent
from commandbus.sagas.definition import SAGA_QUEUE as SAGA_QUEUE  # re-exported here
from commandbus.sagas.definition import DataBuilder, Saga, SagaContext
from commandbus.sagas.outgoing import Timer, command_id_for, saga_command
from commandbus.sagas.preview import compensation_stages, failed_compensation, request_refusal
from commandbus.sagas.state import IN_FLIGHT, SagaState, StepStatus, apply


def _error(exc: BaseException, code: str) -> dict[str, str]:
    return {"type": type(exc).__name__, "code": code, "message": str(exc) or type(exc).__name__}


class Decider:
    """One saga's next transition; see the module docstring."""

    def __init__(
        self,
        saga: Saga | None,
        state: SagaState | None,
        *,
        max_payload_bytes: int,
        default_max_attempts: int,
        headers: Mapping[str, str] | None = None,
        on_send: Callable[[str, str], Mapping[str, str]] | None = None,
    ) -> None:
        """``headers``: the W3C context of what caused the transition; ``on_send(kind,
        step)`` (kind ``step`` or ``compensation``) may give each command its own."""
        self.saga = saga
        self.state = state
        self.events: list[NewEvent] = []
        self.commands: list[OutgoingCommand] = []
        self.timers: list[Timer] = []
        #: saga-queue messages to delete with the transition (consumed, or dead timers)
        self.delete: list[int] = []
        #: TSQ commands an operator's cancel withdraws: (domain, command id)
        self.withdraw: list[tuple[str, UUID]] = []
        self._max_payload = max_payload_bytes
        self._max_attempts = default_max_attempts
        self._headers = dict(headers or {})
        self._on_send = on_send
        self._causation: UUID | None = None
        self._by: dict[str, str] = {}  # an operator request's source (web, cli, api)
        # the trace context each command of this transition was sent with
        self._traces: dict[UUID, dict[str, str]] = {}

    # -- emitting -----------------------------------------------------------------------

    def emit(self, event_type: str, data: dict[str, Any]) -> None:
        before = (
            {}
            if self.state is None
            else {s.name: s.timer_msg_id for s in self.state.steps.values() if s.timer_msg_id}
        )
        self.state = apply(self.state, event_type, data)
        for name, msg_id in before.items():
            if self.state.steps[name].timer_msg_id is None:
                self.delete.append(msg_id)
        self.events.append(
            NewEvent(
                event_type=event_type,
                data=data,
                correlation_id=self.state.correlation_id,
                causation_id=self._causation,
                metadata={"trace": self._headers} if self._headers else {},
            )
        )

    @property
    def _state(self) -> SagaState:
        assert self.state is not None
        return self.state

    def _build(self, builder: DataBuilder) -> dict[str, Any]:
        st = self._state
        if builder is None:
            return {}
        if callable(builder):
            value = builder(SagaContext(saga_id=st.saga_id, input=st.input, results=st.results))
        else:
            value = builder
        if not isinstance(value, Mapping):
            raise TypeError(f"a data builder returned {type(value).__name__}, not a mapping")
        return dict(value)

    def _data_json(self, builder: DataBuilder) -> str:
        return dumps_limited(self._build(builder), self._max_payload, what="saga command data")

    def _send(
        self,
        *,
        kind: str,
        step: str,
        domain: str,
        command_type: str,
        data_json: str,
        max_attempts: int | None,
    ) -> OutgoingCommand:
        st = self._state
        trace = self._headers if self._on_send is None else dict(self._on_send(kind, step))
        cid = command_id_for(st.saga_id, st.sent)
        self._traces[cid] = trace
        cmd = saga_command(
            saga_id=st.saga_id,
            command_id=cid,
            domain=domain,
            command_type=command_type,
            correlation_id=st.correlation_id,
            causation_id=self._causation,
            max_attempts=self._max_attempts if max_attempts is None else max_attempts,
            data_json=data_json,
            trace=trace,
        )
        self.commands.append(cmd)
        return cmd

    # -- inputs -------------------------------------------------------------------------

    def start(
        self,
        *,
        saga_id: UUID,
        input: Mapping[str, Any],
        correlation_id: UUID,
        idempotency_key: str | None,
    ) -> None:
        assert self.saga is not None
        self.emit(
            ev.SAGA_STARTED,
            {
                "saga_id": str(saga_id),
                "name": self.saga.name,
                "version": self.saga.version,
                "input": dict(input),
                "correlation_id": str(correlation_id),
                "idempotency_key": idempotency_key,
            },
        )
        self.advance()

    def reply(self, msg_id: int | None, body: Mapping[str, Any]) -> None:
        """A command's outcome arrived (consumed: its message, if any, is deleted)."""
        if msg_id is not None:
            self.delete.append(msg_id)
        st = self._state
        try:
            cid = UUID(str(body["command_id"]))
            outcome = str(body["outcome"])
        except (KeyError, ValueError):
            self._ignore(body, "not a command reply")
            return
        self._causation = cid
        found = st.step_of_command(cid)
        if found is None:
            self._ignore(body, "no step of this saga sent that command")
            return
        step, is_compensation = found
        base = {"step": step.name, "command_id": str(cid)}
        error = body.get("error")
        if is_compensation:
            if step.status not in (StepStatus.COMPENSATING, StepStatus.COMPENSATION_FAILED):
                self._ignore(body, f"the step's compensation is already {step.status}")
            elif outcome == REPLY_SUCCESS:
                self.emit(ev.SAGA_STEP_COMPENSATED, base)
            elif step.status is StepStatus.COMPENSATION_FAILED and outcome == REPLY_CANCELLED:
                # an operator withdrew the failed compensation (the undo was done by
                # hand): the saga goes on compensating the steps before it
                self.emit(ev.SAGA_STEP_COMPENSATED, {**base, "by_operator": True})
            elif step.status is StepStatus.COMPENSATION_FAILED:
                self._ignore(body, "the compensation already failed")
            elif outcome in (REPLY_FAILED, REPLY_CANCELLED, REPLY_TROUBLESHOOTING):
                self.emit(
                    ev.SAGA_STEP_COMPENSATION_FAILED,
                    {**base, "outcome": outcome, "error": error},
                )
            else:
                self._ignore(body, f"unknown outcome {outcome!r}")
            self.advance()
            return
        if step.status in IN_FLIGHT:
            if outcome == REPLY_SUCCESS:
                pivot = self.saga is not None and self.saga.step(step.name).pivot
                data: dict[str, Any] = {**base, "result": body.get("result")}
                if pivot:
                    data["pivot"] = True
                    if st.cancelled:
                        # nothing is undone while a step is out: past the pivot the
                        # saga can only go forward, so the cancel came too late
                        data["cancel_overtaken"] = True
                self.emit(ev.SAGA_STEP_COMPLETED, data)
            elif outcome in (REPLY_FAILED, REPLY_CANCELLED):
                self.emit(ev.SAGA_STEP_FAILED, {**base, "outcome": outcome, "error": error})
                self._failed(error, "step_failed")
            elif outcome == REPLY_TROUBLESHOOTING:
                if step.status is StepStatus.WAITING_ON_OPERATOR:
                    self._ignore(body, "the step already waits on an operator")
                else:
                    self.emit(ev.SAGA_STEP_WAITING_ON_OPERATOR, {**base, "error": error})
                    if st.cancelled:
                        # the saga is being cancelled: its command is withdrawn too
                        self.withdraw.append((step.domain, step.command_id))
            else:
                self._ignore(body, f"unknown outcome {outcome!r}")
        elif step.status is StepStatus.TIMED_OUT and outcome == REPLY_SUCCESS:
            # it completed after all: it is compensated like any completed step
            self.emit(ev.SAGA_STEP_COMPLETED, {**base, "result": body.get("result"), "late": True})
        else:
            self._ignore(body, f"the step is already {step.status}")
        self.advance()

    def timer(self, msg_id: int, body: Mapping[str, Any]) -> None:
        """A step's timer fired (a stale one is only deleted)."""
        self.delete.append(msg_id)
        st = self._state
        step = st.steps.get(str(body.get("step")))
        if (
            step is None
            or str(step.command_id) != str(body.get("command_id"))
            or step.status is not StepStatus.RUNNING
            or step.timer_msg_id != msg_id
        ):
            return
        fails = not st.pivoted
        seconds = body.get("seconds")
        error = {
            "type": "StepTimeout",
            "code": "STEP_TIMED_OUT",
            "message": f"step {step.name!r} had no outcome within {seconds} s",
        }
        self.emit(
            ev.SAGA_STEP_TIMED_OUT,
            {"step": step.name, "command_id": str(step.command_id), "fails": fails, "error": error},
        )
        if fails:
            self._failed(error, "step_timed_out")
        self.advance()

    def cancel(self, reason: str | None, operator: str | None = None) -> None:
        """Compensate: steps still out are waited for, then undone in reverse.

        A step waiting on an operator has its troubleshooting-queue command
        withdrawn (cancelled with the transition), and so has one that lands there
        later; if the pivot step succeeds meanwhile the cancel is overtaken and the
        saga goes forward.
        """
        st = self._state
        if st.ended is not None:
            raise InvalidStateError(f"saga {st.saga_id} is {st.ended}: nothing to cancel")
        if st.pivoted:
            raise InvalidStateError(
                f"saga {st.saga_id} is past its pivot: it only goes forward and cannot be "
                "compensated"
            )
        if (why := request_refusal(st, "cancel")) is not None:
            raise InvalidStateError(why)
        self.emit(
            ev.SAGA_CANCEL_REQUESTED,
            {"reason": reason or "cancelled by an operator", "operator": operator, **self._by},
        )
        self.withdraw.extend(
            (s.domain, s.command_id)
            for s in st.steps.values()
            if s.status is StepStatus.WAITING_ON_OPERATOR
        )
        self.advance()

    def pause(self, reason: str | None, operator: str | None = None) -> None:
        st = self._state
        if st.ended is not None:
            raise InvalidStateError(f"saga {st.saga_id} is {st.ended}: it cannot be paused")
        if (why := request_refusal(st, "pause")) is not None:
            raise InvalidStateError(why)
        self.emit(ev.SAGA_PAUSED, {"reason": reason, "operator": operator, **self._by})

    def resume(self, operator: str | None = None) -> None:
        st = self._state
        if (why := request_refusal(st, "resume")) is not None:
            raise InvalidStateError(why)
        self.emit(ev.SAGA_RESUMED, {"operator": operator, **self._by})
        self.advance()

    def mark_compensated(
        self, step_name: str, reason: str | None, operator: str | None = None
    ) -> None:
        """An operator did a failed compensation's undo by hand: the step counts as
        compensated (``by_operator``) and the saga goes on compensating the steps
        before it. Only for a step whose compensation failed (:class:`InvalidStateError`
        otherwise)."""
        st = self._state
        if st.ended is not None:
            raise InvalidStateError(f"saga {st.saga_id} is {st.ended}: nothing to compensate")
        step = failed_compensation(st, step_name)
        cid = step.compensation_id
        self.emit(
            ev.SAGA_STEP_COMPENSATED,
            {
                "step": step.name,
                "command_id": None if cid is None else str(cid),
                "by_operator": True,
                "reason": reason,
                "operator": operator,
                **self._by,
            },
        )
        self.advance()

    def control(self, msg_id: int, body: Mapping[str, Any]) -> None:
        """An operator's request (cancel, pause, resume, mark_compensated); a refused
        one is recorded."""
        self.delete.append(msg_id)
        action = body.get("action")
        reason = body.get("reason")
        operator = body.get("operator")
        self._by = {} if body.get("source") is None else {"source": str(body["source"])}
        try:
            if action == "cancel":
                self.cancel(reason, operator)
            elif action == "pause":
                self.pause(reason, operator)
            elif action == "resume":
                self.resume(operator)
            elif action == "mark_compensated":
                self.mark_compensated(str(body.get("step")), reason, operator)
            else:
                raise InvalidStateError(f"unknown operator action {action!r}")
        except InvalidStateError as exc:
            self.emit(
                ev.SAGA_REPLY_IGNORED,
                {"command_id": None, "outcome": None, "action": action, "reason": exc.message},
            )

    def blocked(self, msg_id: int, reason: str) -> bool:
        """No definition for this saga's version: record it once, decide nothing.

        Returns whether an event was emitted (the message itself is kept).
        """
        st = self._state
        if st.blocked == reason:
            return False
        self.emit(ev.SAGA_BLOCKED, {"reason": reason, "msg_id": msg_id})
        return True

    # -- deciding -----------------------------------------------------------------------

    def _ignore(self, body: Mapping[str, Any], reason: str) -> None:
        self.emit(
            ev.SAGA_REPLY_IGNORED,
            {
                "command_id": body.get("command_id"),
                "outcome": body.get("outcome"),
                "reason": reason,
            },
        )

    def _failed(self, error: Any, reason: str) -> None:
        st = self._state
        if st.pivoted:
            self.emit(ev.SAGA_FAILED, {"reason": reason, "error": error})
        elif not st.compensating:
            self.emit(ev.SAGA_COMPENSATION_STARTED, {"reason": reason, "error": error})

    def advance(self) -> None:
        """Send what the state calls for next: a stage, compensations, or the end."""
        saga = self.saga
        st = self._state
        if saga is None or st.ended is not None or st.paused or st.blocked:
            return
        steps = st.steps.values()
        if any(s.status in IN_FLIGHT for s in steps):
            return  # outcomes still to come (a compensation waits for them too)
        if st.compensating:
            self._compensate_next(saga)
            return
        nxt = st.stage + 1
        if nxt >= len(saga.stages):
            self.emit(ev.SAGA_COMPLETED, {})
            return
        stage = saga.stages[nxt]
        try:
            # each command's data, checked and serialised once
            built = [(step, self._data_json(step.data)) for step in stage]
        except Exception as exc:
            error = _error(exc, "DATA_BUILDER_FAILED")
            error["message"] = f"building stage {saga.stage_names[nxt]!r}: {error['message']}"
            self._failed(error, "data_builder_failed")
            self.advance()
            return
        for step, data_json in built:
            cmd = self._send(
                kind="step",
                step=step.name,
                domain=step.domain,
                command_type=step.command,
                data_json=data_json,
                max_attempts=step.max_attempts,
            )
            event_data: dict[str, Any] = {
                "step": step.name,
                "stage": nxt,
                "command_id": str(cmd.command_id),
                "domain": step.domain,
                "command_type": step.command,
            }
            if step.timeout is not None:
                seconds = step.timeout.total_seconds()
                event_data["timeout_seconds"] = seconds
                event_data["timer_msg_id"] = None  # filled in when the timer is allocated
                self.timers.append(
                    Timer(
                        step=step.name,
                        command_id=cmd.command_id,
                        seconds=seconds,
                        event_data=event_data,
                        trace=self._traces.get(cmd.command_id, {}),
                    )
                )
            self.emit(ev.SAGA_STEP_STARTED, event_data)

    def _compensate_next(self, saga: Saga) -> None:
        st = self._state
        steps = list(st.steps.values())
        if any(
            s.status in (StepStatus.COMPENSATING, StepStatus.COMPENSATION_FAILED) for s in steps
        ):
            return  # one stage at a time, each waiting for its own outcomes
        stages = compensation_stages(saga, st)
        if not stages:
            self.emit(ev.SAGA_COMPENSATED, {"reason": st.reason})
            return
        for s in stages[0]:
            comp = saga.step(s.name).compensation
            assert comp is not None
            domain = comp.domain or saga.step(s.name).domain
            try:
                cmd = self._send(
                    kind="compensation",
                    step=s.name,
                    domain=domain,
                    command_type=comp.command,
                    data_json=self._data_json(comp.data),
                    max_attempts=comp.max_attempts,
                )
            except Exception as exc:
                self.emit(
                    ev.SAGA_STEP_COMPENSATION_FAILED,
                    {
                        "step": s.name,
                        "command_id": None,
                        "error": _error(exc, "DATA_BUILDER_FAILED"),
                    },
                )
                continue
            self.emit(
                ev.SAGA_STEP_COMPENSATING,
                {
                    "step": s.name,
                    "command_id": str(cmd.command_id),
                    "domain": domain,
                    "command_type": comp.command,
                },
            )
