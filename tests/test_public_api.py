"""The public API is exactly what ``commandbus.__all__`` lists, and it is documented."""

from __future__ import annotations

import inspect

import commandbus


def test_every_exported_name_exists_and_is_documented() -> None:
    assert len(commandbus.__all__) == len(set(commandbus.__all__))
    for name in commandbus.__all__:
        obj = getattr(commandbus, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__doc__, f"{name} has no docstring"


def test_nothing_public_is_left_out_of_all() -> None:
    public = {
        name
        for name, obj in vars(commandbus).items()
        if not name.startswith("_") and not inspect.ismodule(obj) and name != "annotations"
    }
    assert public <= set(commandbus.__all__), public - set(commandbus.__all__)


def test_errors_say_whether_they_are_retryable() -> None:
    assert commandbus.TransientCommandError.retryable
    assert commandbus.ConcurrencyError.retryable
    assert commandbus.DatabaseUnavailableError.retryable
    assert not commandbus.PermanentCommandError.retryable
    assert not commandbus.BusinessRuleError.retryable
    for name in commandbus.__all__:
        obj = getattr(commandbus, name)
        if inspect.isclass(obj) and issubclass(obj, Exception):
            assert issubclass(obj, commandbus.CommandBusError), name


def test_every_error_the_library_defines_is_exported() -> None:
    from commandbus import errors

    defined = {
        name
        for name, obj in vars(errors).items()
        if inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == errors.__name__
    }
    assert defined - set(commandbus.__all__) == set()
