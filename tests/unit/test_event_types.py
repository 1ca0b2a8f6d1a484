"""The wire names in ``commandbus.event_types`` are the only spelling of each name.

Every constant is used by the package (an unused one is a name nothing writes or
reads), and no module spells a name itself: SQL takes them as parameters and Python
code uses the constants, so renaming one can never leave a stale copy behind.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

import commandbus
from commandbus import event_types

PACKAGE = Path(commandbus.__file__).parent
DEFINITIONS = Path(event_types.__file__)
MODULE = "commandbus.event_types"

CONSTANTS = {
    name: value
    for name, value in vars(event_types).items()
    if name.isupper() and isinstance(value, str)
}
STREAM_TYPES = {name for name in CONSTANTS if name.endswith("_STREAM")}


def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p != DEFINITIONS)


@cache
def _referenced() -> dict[str, list[str]]:
    """Constant name -> the modules that use it (``ev.NAME`` or ``from ... import NAME``)."""
    uses: dict[str, list[str]] = {}
    for path in _sources():
        tree = ast.parse(path.read_text(), str(path))
        aliases: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "commandbus":
                aliases |= {a.asname or a.name for a in node.names if a.name == "event_types"}
            elif isinstance(node, ast.ImportFrom) and node.module == MODULE:
                for a in node.names:
                    uses.setdefault(a.name, []).append(path.name)
            elif isinstance(node, ast.Import):
                aliases |= {a.asname for a in node.names if a.name == MODULE and a.asname}
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
            ):
                uses.setdefault(node.attr, []).append(path.name)
    return uses


def test_the_constants_are_found() -> None:
    assert "COMMAND_SENT" in CONSTANTS and "BATCH_STREAM" in STREAM_TYPES
    assert len(CONSTANTS) >= 14


@pytest.mark.parametrize("name", sorted(CONSTANTS))
def test_every_constant_is_used(name: str) -> None:
    assert _referenced().get(name), f"event_types.{name} is used nowhere in {PACKAGE}"


def _spellings(name: str, value: str) -> re.Pattern[str]:
    """How a copy of the name would look in source: quoted (SQL or Python), or, for a
    stream type, as the start of a quoted stream id (``'command:...``, f"batch:...")."""
    v = re.escape(value)
    if name in STREAM_TYPES:
        return re.compile(rf"'{v}'|['\"]{v}:")
    return re.compile(rf"['\"]{v}['\"]")


@pytest.mark.parametrize("name", sorted(CONSTANTS))
def test_no_module_spells_a_name_itself(name: str) -> None:
    pattern = _spellings(name, CONSTANTS[name])
    copies = [
        f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}"
        for path in _sources()
        for n, line in enumerate(path.read_text().splitlines(), start=1)
        if pattern.search(line)
    ]
    assert not copies, f"{name} ({CONSTANTS[name]!r}) spelled outside event_types.py:\n" + (
        "\n".join(copies)
    )
