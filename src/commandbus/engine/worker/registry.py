"""Which handler serves each (domain, command type)."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from commandbus.errors import HandlerRegistrationError
from commandbus.names import validate_command_type, validate_domain

if TYPE_CHECKING:
    from commandbus.engine.worker.context import HandlerContext
    from commandbus.models import Command

HandlerFn = Callable[["Command", "HandlerContext"], Awaitable[Any]]


class HandlerRegistry:
    """One async handler per (domain, command type), registered by call or decorator."""

    def __init__(self) -> None:
        self._handlers: dict[tuple[str, str], HandlerFn] = {}

    def register(self, domain: str, command_type: str, handler: HandlerFn) -> None:
        validate_domain(domain)
        validate_command_type(command_type)
        if not inspect.iscoroutinefunction(handler) and not inspect.iscoroutinefunction(
            getattr(handler, "__call__", None)  # noqa: B004 - async callables
        ):
            raise HandlerRegistrationError(
                f"handler for {domain}.{command_type} must be an async function"
            )
        _check_signature(domain, command_type, handler)
        key = (domain, command_type)
        if key in self._handlers:
            raise HandlerRegistrationError(
                f"a handler is already registered for {domain}.{command_type}"
            )
        self._handlers[key] = handler

    def handler(self, domain: str, command_type: str) -> Callable[[HandlerFn], HandlerFn]:
        """Decorator form of :meth:`register`."""

        def wrap(fn: HandlerFn) -> HandlerFn:
            self.register(domain, command_type, fn)
            return fn

        return wrap

    def get(self, domain: str, command_type: str) -> HandlerFn | None:
        return self._handlers.get((domain, command_type))

    def command_types(self, domain: str) -> list[str]:
        return sorted(t for d, t in self._handlers if d == domain)

    def domains(self) -> list[str]:
        return sorted({d for d, _t in self._handlers})

    def validate_for(self, domain: str) -> None:
        """Raise unless at least one handler serves ``domain`` (checked when a worker is built)."""
        validate_domain(domain)
        if not self.command_types(domain):
            known = ", ".join(self.domains()) or "none"
            raise HandlerRegistrationError(
                f"no handlers are registered for domain {domain!r} (domains with handlers: {known})"
            )


def _check_signature(domain: str, command_type: str, handler: HandlerFn) -> None:
    """A handler is called as ``handler(command, ctx)``: refuse one that cannot be.

    A wrong signature would otherwise be a ``TypeError`` on every delivery.
    """
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):
        return  # no signature to read (some builtins, C callables): called as it is
    try:
        signature.bind(None, None)
    except TypeError as exc:
        name = getattr(handler, "__qualname__", type(handler).__qualname__)
        raise HandlerRegistrationError(
            f"handler for {domain}.{command_type} must take (command, ctx), "
            f"but {name}{signature} cannot: {exc}"
        ) from None
