"""Result types for expected outcomes (a duplicate id is an answer, not a crash)."""

from __future__ import annotations

from typing import Any, Generic, Literal, NoReturn, TypeVar

import attrs

T = TypeVar("T")


@attrs.frozen(kw_only=True)
class Success(Generic[T]):
    """The operation did what was asked; ``value`` is its answer."""

    value: T

    @property
    def ok(self) -> Literal[True]:
        return True

    def unwrap(self) -> T:
        return self.value


@attrs.frozen(kw_only=True)
class Failure:
    """An expected refusal: ``code`` is stable, ``message`` is for people."""

    code: str
    message: str
    details: dict[str, Any] = attrs.field(factory=dict)

    @property
    def ok(self) -> Literal[False]:
        return False

    def unwrap(self) -> NoReturn:
        """Raise the library error whose ``code`` this failure carries."""
        from commandbus.errors import error_for_code

        raise error_for_code(self.code)(self.message, details=self.details)


Result = Success[T] | Failure
