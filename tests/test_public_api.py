"""The public API is exactly what ``commandbus.__all__`` lists, and it is documented;
its names are imported when first used, so ``import commandbus`` is light."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

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


def fresh(code: str) -> str:
    """What ``code`` prints in a new interpreter."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout


def test_importing_commandbus_imports_nothing_else() -> None:
    loaded = fresh("import sys, commandbus; print(*sorted(sys.modules))").split()
    assert [m for m in loaded if m.startswith("commandbus.")] == []
    heavy = ("psycopg", "psycopg_pool", "click", "attrs", "opentelemetry", "asyncio", "typing")
    assert [m for m in loaded if m.split(".")[0] in heavy] == []


def test_names_are_imported_when_first_used() -> None:
    out = fresh(
        "import sys\n"
        "from commandbus import ValidationError\n"
        "print('psycopg' in sys.modules, ValidationError.__module__)\n"
        "from commandbus import Worker, SagaClient, __version__\n"
        "import commandbus\n"
        "print('psycopg' in sys.modules, Worker.__name__, SagaClient.__name__, __version__)\n"
        "print(all(n in vars(commandbus) for n in ('Worker', 'SagaClient', '__version__')))\n"
    )
    assert out.splitlines() == [
        "False commandbus.errors",
        f"True Worker SagaClient {metadata.version('commandbus')}",
        "True",  # kept: later uses are plain attributes
    ]


def test_every_exported_name_resolves_in_a_fresh_interpreter() -> None:
    """Each name, imported alone first, is its defining module's object; and
    ``from commandbus import *`` gives all of them."""
    out = fresh(
        "import importlib, commandbus\n"
        "for module, names in commandbus._DEFINED_IN.items():\n"
        "    for name in names:\n"
        "        defined = getattr(importlib.import_module(module), name)\n"
        "        assert getattr(commandbus, name) is defined, name\n"
        "ns = {}\n"
        "exec('from commandbus import *', ns)\n"
        "print(sorted(set(ns) - {'__builtins__'}) == sorted(commandbus.__all__))\n"
    )
    assert out == "True\n"


def test_an_unknown_name_is_an_attribute_error() -> None:
    name = "NoSuchThing"
    with pytest.raises(AttributeError) as raised:
        getattr(commandbus, name)
    assert str(raised.value) == "module 'commandbus' has no attribute 'NoSuchThing'"
    assert not hasattr(commandbus, "_no_such_thing")
    with pytest.raises(ImportError, match="cannot import name 'NoSuchThing' from 'commandbus'"):
        exec("from commandbus import NoSuchThing", {})


def test_dir_lists_every_public_name() -> None:
    assert set(commandbus.__all__) <= set(dir(commandbus))
    assert set(commandbus.__all__) <= set(
        fresh("import commandbus; print(*dir(commandbus))").split()
    )


def test_the_lazy_table_and_the_type_checkers_imports_name_the_same_api() -> None:
    """``_DEFINED_IN`` (what runs), the imports under TYPE_CHECKING (what type
    checkers and IDEs see) and ``__all__`` list the same names, from the same modules."""
    tree = ast.parse(Path(commandbus.__file__).read_text())
    [checking] = [
        node
        for node in tree.body
        if isinstance(node, ast.If)
        and isinstance(node.test, ast.Name)
        and node.test.id == "TYPE_CHECKING"
    ]
    seen: dict[str, tuple[str, ...]] = {}
    for node in checking.body:
        if isinstance(node, ast.ImportFrom):
            assert node.module is not None
            assert all(alias.asname is None for alias in node.names)
            seen[node.module] = seen.get(node.module, ()) + tuple(a.name for a in node.names)
    assert seen == commandbus._DEFINED_IN
    lazy = [name for names in commandbus._DEFINED_IN.values() for name in names]
    assert sorted([*lazy, "__version__"]) == sorted(commandbus.__all__)
