"""Defining a saga in Python: steps, parallel groups, compensations, a pivot.

A saga is a named, versioned list of *stages*; a stage is one :class:`Step` or a
:class:`Parallel` group of steps that run at once and join when all succeed. Each
step sends one command to a domain and may name a :class:`Compensation`, the
command that undoes it. Data for a command is a mapping, or a function of a
:class:`SagaContext` (the saga's input and the results of the steps so far), so
results pass forward without anyone touching JSON or queues. Everything is
checked when the definition is built (:class:`~commandbus.errors.SagaDefinitionError`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeAlias
from uuid import UUID

import attrs

from commandbus.arguments import MAX_DELAY, MAX_INT
from commandbus.codec import dumps
from commandbus.errors import InvalidNameError, PayloadError, SagaDefinitionError
from commandbus.names import validate_command_type, validate_domain

if TYPE_CHECKING:
    from commandbus.config import Config
    from commandbus.sagas.inline import InlineTransitions

#: The longest saga, step or group name.
MAX_NAME_CHARS = 128
#: What a saga, step or group name may be (the saga filter checks names with it too).
NAME_RE = re.compile(rf"[A-Za-z][A-Za-z0-9_.:-]{{0,{MAX_NAME_CHARS - 1}}}")

#: The queue every saga command replies to, and where saga timers wait (no domain).
SAGA_QUEUE = "commandbus_sagas"


@attrs.frozen(kw_only=True)
class SagaContext:
    """What a data builder sees: the saga's id and input, and the results so far.

    ``results`` maps each completed step's name to what its handler returned.
    """

    saga_id: UUID
    input: Mapping[str, Any]
    results: Mapping[str, Any]


#: A command's data: a mapping, a function of the context returning one, or None ({}).
DataBuilder: TypeAlias = Mapping[str, Any] | Callable[[SagaContext], Mapping[str, Any]] | None


def _check_name(value: object, what: str) -> str:
    if not isinstance(value, str) or NAME_RE.fullmatch(value) is None:
        raise SagaDefinitionError(
            f"invalid {what} {value!r}: use 1-128 characters, letters, digits and "
            "'_', '.', ':', '-', starting with a letter"
        )
    return value


def _check_data(value: object, what: str) -> None:
    if value is not None and not isinstance(value, Mapping) and not callable(value):
        raise SagaDefinitionError(
            f"{what} must be a mapping, a function of the SagaContext, or None; "
            f"got {type(value).__name__}"
        )
    if isinstance(value, Mapping):
        try:
            dumps(dict(value), what=what)
        except PayloadError as exc:
            raise SagaDefinitionError(exc.message) from None


def _check_attempts(value: object, what: str) -> None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_INT
    ):
        raise SagaDefinitionError(f"{what} must be an int >= 1 or None, got {value!r}")


def _named(fn: Callable[[], str], what: str) -> str:
    try:
        return fn()
    except InvalidNameError as exc:
        raise SagaDefinitionError(f"{what}: {exc.message}") from None


def _domain(value: object, what: str) -> str:
    domain = _named(lambda: validate_domain(value), what)
    if domain == SAGA_QUEUE:
        raise SagaDefinitionError(
            f"{what}: {SAGA_QUEUE!r} is the saga queue (replies and timers), not a domain"
        )
    return domain


@attrs.frozen
class Compensation:
    """The command that undoes a step: sent in the step's domain unless ``domain`` says."""

    command: str
    data: DataBuilder = attrs.field(default=None, kw_only=True)
    domain: str | None = attrs.field(default=None, kw_only=True)
    max_attempts: int | None = attrs.field(default=None, kw_only=True)


@attrs.frozen
class Step:
    """One step: send ``command`` to ``domain`` with ``data``; ``compensation`` undoes it.

    ``pivot=True``: once this step succeeds the saga only goes forward (a later
    failure is retried or waits on an operator, and nothing is compensated).
    ``timeout``: a durable timer; if no outcome arrives in time the step fails
    (before the pivot). ``max_attempts`` overrides the command's attempts.
    """

    name: str
    domain: str = attrs.field(kw_only=True)
    command: str = attrs.field(kw_only=True)
    data: DataBuilder = attrs.field(default=None, kw_only=True)
    compensation: Compensation | None = attrs.field(default=None, kw_only=True)
    pivot: bool = attrs.field(default=False, kw_only=True)
    timeout: timedelta | None = attrs.field(default=None, kw_only=True)
    max_attempts: int | None = attrs.field(default=None, kw_only=True)


@attrs.frozen(init=False)
class Parallel:
    """Steps sent at once; the saga goes on when all of them have succeeded."""

    name: str
    steps: tuple[Step, ...]

    def __init__(self, name: str, *steps: Step) -> None:
        self.__attrs_init__(name, tuple(steps))


Stage: TypeAlias = Step | Parallel


class Saga:
    """A saga definition: ``Saga("order", steps=[...], version=1)``.

    Definitions are immutable once built. A running saga keeps the version it
    started with; register a new version next to the old one to change a process.
    """

    def __init__(self, name: str, *, steps: Sequence[Stage], version: int = 1) -> None:
        self.name = _check_name(name, "saga name")
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_INT:
            raise SagaDefinitionError(f"saga version must be an int >= 1, got {version!r}")
        self.version = version
        if isinstance(steps, str | bytes) or not isinstance(steps, Iterable):
            raise SagaDefinitionError(f"steps must be a list of Step or Parallel, got {steps!r}")
        stages = tuple(steps)
        if not stages:
            raise SagaDefinitionError(f"saga {name!r} has no steps")
        self.stages: tuple[tuple[Step, ...], ...] = ()
        self.stage_names: tuple[str, ...] = ()
        self._steps: dict[str, tuple[int, Step]] = {}
        seen: set[str] = set()
        pivot_at: int | None = None
        built: list[tuple[Step, ...]] = []
        for i, stage in enumerate(stages):
            if isinstance(stage, Step):
                members: tuple[Step, ...] = (stage,)
            elif isinstance(stage, Parallel):
                _check_name(stage.name, "parallel group name")
                if stage.name in seen:
                    raise SagaDefinitionError(f"saga {name!r}: name {stage.name!r} is used twice")
                seen.add(stage.name)
                if not stage.steps:
                    raise SagaDefinitionError(f"parallel group {stage.name!r} has no steps")
                members = stage.steps
                if any(isinstance(s, Step) and s.pivot for s in members):
                    raise SagaDefinitionError(
                        f"parallel group {stage.name!r}: a pivot must be a step of its own"
                    )
            else:
                raise SagaDefinitionError(
                    f"steps[{i}] must be a Step or Parallel, got {type(stage).__name__}"
                )
            for step in members:
                if not isinstance(step, Step):
                    raise SagaDefinitionError(
                        f"parallel group members must be Step, got {type(step).__name__}"
                    )
                self._check_step(step, seen, after_pivot=pivot_at is not None)
                self._steps[step.name] = (i, step)
                if step.pivot:
                    if pivot_at is not None:
                        raise SagaDefinitionError(
                            f"saga {name!r}: only one step may be the pivot "
                            f"({step.name!r} and an earlier one are)"
                        )
                    pivot_at = i
            built.append(members)
        self.stages = tuple(built)
        self.stage_names = tuple(s.name for s in stages)
        self.pivot_stage = pivot_at

    def _check_step(self, step: Step, seen: set[str], *, after_pivot: bool) -> None:
        where = f"saga {self.name!r} step {step.name!r}"
        _check_name(step.name, "step name")
        if step.name in seen:
            raise SagaDefinitionError(f"saga {self.name!r}: name {step.name!r} is used twice")
        seen.add(step.name)
        _domain(step.domain, where)
        _named(lambda: validate_command_type(step.command), where)
        _check_data(step.data, f"{where}: data")
        _check_attempts(step.max_attempts, f"{where}: max_attempts")
        if not isinstance(step.pivot, bool):
            raise SagaDefinitionError(f"{where}: pivot must be a bool, got {step.pivot!r}")
        if step.timeout is not None and (
            not isinstance(step.timeout, timedelta)
            or step.timeout <= timedelta(0)
            or step.timeout > MAX_DELAY
        ):
            raise SagaDefinitionError(
                f"{where}: timeout must be a positive timedelta of at most {MAX_DELAY.days} "
                f"days, or None; got {step.timeout!r}"
            )
        if step.pivot and step.timeout is not None:
            # a pivot that timed out (the saga compensates) but then succeeds could
            # never be undone: a pivot waits for its outcome, however long
            raise SagaDefinitionError(
                f"{where}: a pivot cannot have a timeout (its late success could not be undone)"
            )
        comp = step.compensation
        if comp is not None:
            if not isinstance(comp, Compensation):
                raise SagaDefinitionError(
                    f"{where}: compensation must be a Compensation, got {type(comp).__name__}"
                )
            if step.pivot or after_pivot:
                raise SagaDefinitionError(
                    f"{where}: a compensation at or after the pivot would never run"
                )
            _named(lambda: validate_command_type(comp.command), f"{where} compensation")
            if comp.domain is not None:
                _domain(comp.domain, f"{where} compensation")
            _check_data(comp.data, f"{where}: compensation data")
            _check_attempts(comp.max_attempts, f"{where}: compensation max_attempts")

    # -- lookups ------------------------------------------------------------------------

    @property
    def key(self) -> tuple[str, int]:
        return (self.name, self.version)

    def step(self, name: str) -> Step:
        return self._steps[name][1]

    def stage_of(self, name: str) -> int:
        return self._steps[name][0]

    def steps(self) -> Iterator[Step]:
        for stage in self.stages:
            yield from stage

    @property
    def domains(self) -> frozenset[str]:
        """Every domain a command of this saga may be sent to."""
        out = set()
        for s in self.steps():
            out.add(s.domain)
            if s.compensation is not None:
                out.add(s.compensation.domain or s.domain)
        return frozenset(out)

    def __repr__(self) -> str:
        return f"Saga({self.name!r}, version={self.version}, stages={list(self.stage_names)})"


class SagaRegistry:
    """The saga definitions a coordinator runs, by name and version."""

    def __init__(self, sagas: Iterable[Saga] = ()) -> None:
        self._by_key: dict[tuple[str, int], Saga] = {}
        self._inline: dict[int, InlineTransitions] = {}
        for saga in sagas:
            self.register(saga)

    def register(self, saga: Saga) -> Saga:
        """Add a definition; the same name and version twice must be the same object."""
        if not isinstance(saga, Saga):
            raise SagaDefinitionError(f"expected a Saga, got {type(saga).__name__}")
        old = self._by_key.get(saga.key)
        if old is not None and old is not saga:
            raise SagaDefinitionError(
                f"saga {saga.name!r} version {saga.version} is already registered"
            )
        self._by_key[saga.key] = saga
        return saga

    def get(self, name: str, version: int) -> Saga | None:
        return self._by_key.get((name, version))

    def __iter__(self) -> Iterator[Saga]:
        return iter(self._by_key.values())

    def __len__(self) -> int:
        return len(self._by_key)

    @property
    def domains(self) -> frozenset[str]:
        return frozenset(d for s in self for d in s.domains)

    def inline_replies(self, config: Config) -> InlineTransitions:
        """What a worker given this registry (``Worker(..., sagas=registry)``) uses to
        move its sagas in the transaction that records a step's outcome.

        Workers of one process given the same registry and config share one (and
        so the saga states it keeps: the next step's worker need not read back
        what the last one wrote).
        """
        from commandbus.sagas.inline import InlineTransitions

        found = self._inline.get(id(config))
        if found is None or found.config is not config:
            found = self._inline[id(config)] = InlineTransitions(self, config)
        return found
