"""What cancelling a saga would do, before it is done: :func:`preview_cancel`.

Computed with :func:`compensation_stages`, the function the coordinator's decider
(:mod:`commandbus.sagas.decide`) uses to choose each stage of compensations, so the preview lists
what then runs, in that order (given that no step still out completes meanwhile:
those are listed apart, and a step that completes is compensated too).
"""

from __future__ import annotations

import attrs

from commandbus.errors import InvalidStateError
from commandbus.sagas.definition import Saga
from commandbus.sagas.state import SagaState, StepState, StepStatus


def cancel_refusal(state: SagaState) -> str | None:
    """Why cancelling the saga in ``state`` is refused now, as "is ...: why" after
    the saga's name (None: it may be cancelled). The first half (it has ended)
    refuses every operator request."""
    if state.status.is_final:
        return f"is {state.status.value}: it has ended"
    if state.pivoted:
        return "is past its pivot: it only goes forward and cannot be compensated"
    return None


def request_refusal(state: SagaState, action: str) -> str | None:
    """Why an operator's ``pause``, ``resume`` or ``cancel`` does not apply to the
    saga in ``state`` (None: it does). The client refuses with it at once when no
    request is on its way; the decider records a request it refuses with it."""
    if action == "pause" and state.paused:
        return f"saga {state.saga_id} is paused already"
    if action == "resume" and not state.paused:
        return f"saga {state.saga_id} is {state.status.value}, not paused"
    if action == "cancel" and state.cancelled:
        return f"saga {state.saga_id} is being cancelled already"
    return None


def failed_compensation(state: SagaState, step: str) -> StepState:
    """The step ``step`` whose compensation failed, that an operator may mark
    compensated; :class:`InvalidStateError` saying why not otherwise (the client
    checks a request with it, the decider checks it again when it carries it out)."""
    found = state.steps.get(step)
    if found is None:
        raise InvalidStateError(f"saga {state.saga_id} has no started step {step!r}")
    if found.status is not StepStatus.COMPENSATION_FAILED:
        raise InvalidStateError(
            f"step {step!r} of saga {state.saga_id} is {found.status.value}, "
            "not COMPENSATION_FAILED"
        )
    return found


def compensation_stages(saga: Saga, state: SagaState) -> list[list[StepState]]:
    """The compensations still to run, stage by stage, in the order they run.

    The completed steps that have a compensation, the latest stage first (members
    of a parallel group together, in start order). The coordinator runs the first
    stage of this list each time the one before has ended
    (:meth:`Decider._compensate_next`); a cancel preview shows the whole list.
    """
    todo = [
        s
        for s in state.steps.values()
        if s.status is StepStatus.COMPLETED and saga.step(s.name).compensation is not None
    ]
    return [
        [s for s in todo if s.stage == n] for n in sorted({s.stage for s in todo}, reverse=True)
    ]


@attrs.frozen(kw_only=True)
class PlannedCompensation:
    """One compensation a cancel would send: the step it undoes and its command."""

    step: str
    stage: int
    domain: str
    command_type: str


@attrs.frozen(kw_only=True)
class CancelPreview:
    """What :meth:`~commandbus.SagaClient.cancel_saga` would do now.

    ``refusal`` says why a cancel would be refused (ended, past its pivot; None:
    allowed). ``stages``: the compensations that would run, stage by stage, in
    order (a stage's members together). ``waiting_for``: steps whose command is
    still out; the compensations wait for them, and one that completes is
    compensated too (first, being the latest). ``withdrawn``: steps waiting in the
    troubleshooting queue, whose commands the cancel withdraws (they are not
    compensated: they never ran to completion).
    """

    refusal: str | None
    stages: tuple[tuple[PlannedCompensation, ...], ...]
    waiting_for: tuple[str, ...]
    withdrawn: tuple[str, ...]

    @property
    def allowed(self) -> bool:
        return self.refusal is None

    @property
    def order(self) -> tuple[PlannedCompensation, ...]:
        """Every compensation, flattened in the order they would run."""
        return tuple(c for stage in self.stages for c in stage)


def preview_cancel(definition: Saga, state: SagaState) -> CancelPreview:
    """What cancelling the saga in ``state`` (of ``definition``) would run, in order."""
    why = cancel_refusal(state)
    refusal = None if why is None else f"the saga {why}"
    stages: list[tuple[PlannedCompensation, ...]] = []
    if refusal is None:
        for group in compensation_stages(definition, state):
            planned = []
            for s in group:
                step = definition.step(s.name)
                assert step.compensation is not None
                planned.append(
                    PlannedCompensation(
                        step=s.name,
                        stage=s.stage,
                        domain=step.compensation.domain or step.domain,
                        command_type=step.compensation.command,
                    )
                )
            stages.append(tuple(planned))
    return CancelPreview(
        refusal=refusal,
        stages=tuple(stages),
        waiting_for=tuple(s.name for s in state.steps.values() if s.status is StepStatus.RUNNING),
        withdrawn=tuple(
            s.name for s in state.steps.values() if s.status is StepStatus.WAITING_ON_OPERATOR
        ),
    )
