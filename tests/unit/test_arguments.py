"""Pure argument checks: every text form of an id is the same UUID."""

from __future__ import annotations

from uuid import uuid4

import pytest

from commandbus import ValidationError
from commandbus.arguments import uuid_arg


def test_every_text_form_of_an_id_is_the_same_uuid() -> None:
    u = uuid4()
    forms = [
        str(u),
        str(u).upper(),
        "{" + str(u) + "}",
        u.hex,
        u.hex.upper(),
        f"urn:uuid:{u}",
        f"URN:UUID:{u}",
        f"Urn:Uuid:{str(u).upper()}",
    ]
    assert {uuid_arg(f, "command_id") for f in forms} == {u}


@pytest.mark.parametrize("bad", ["", "x", "urn:uuid:", "URN:UUID:nope", 5, None, b"\x00" * 16])
def test_anything_else_is_a_validation_error_naming_the_argument(bad: object) -> None:
    with pytest.raises(ValidationError, match="command_id"):
        uuid_arg(bad, "command_id")


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"url": 5}, "url"),
        ({"url": "  "}, "url"),
        ({"config": "x"}, "config"),
        ({"pool": "x"}, "pool"),
        ({"max_connections": 0}, "max_connections"),
        ({"min_connections": "1"}, "min_connections"),
        ({"min_connections": 5, "max_connections": 2}, "min_connections"),
        ({"max_connections": True}, "max_connections"),
    ],
)
def test_a_bus_refuses_bad_constructor_arguments(kwargs: dict[str, object], name: str) -> None:
    from commandbus import CommandBus

    with pytest.raises(ValidationError, match=name):
        CommandBus(**kwargs)  # type: ignore[arg-type]
