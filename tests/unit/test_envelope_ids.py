"""The worker's fast id parsing gives what ``UUID()`` gives, and refuses what it refuses."""

from __future__ import annotations

from uuid import UUID, uuid4

import pytest

from commandbus.engine.commands.envelope import _uuid, canonical_id_text


def test_every_form_uuid_takes_parses_the_same() -> None:
    u = uuid4()
    for text in (
        str(u),
        str(u).upper(),
        u.hex,
        "{" + str(u) + "}",
        "urn:uuid:" + str(u),
    ):
        parsed = _uuid(text)
        assert parsed == UUID(text) == u
        assert str(parsed) == str(u) and hash(parsed) == hash(u)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not-a-uuid",
        "g" * 8 + "-0000-0000-0000-" + "0" * 12,  # not hex
        "0000_000-0000-0000-0000-000000000000",  # int() takes '_' between digits
        " 0000000-0000-0000-0000-000000000000",  # and a leading space
        "+0000000-0000-0000-0000-000000000000",  # and a sign
        "00000000-0000-0000-0000-0000000000000",  # too long
        "\u0660" * 8 + "-0000-0000-0000-" + "0" * 12,  # digits int() reads, not ASCII
    ],
)
def test_odd_text_gets_exactly_what_uuid_gives(text: str) -> None:
    try:
        expected: UUID | None = UUID(text)
    except ValueError:
        expected = None
    if expected is None:
        with pytest.raises(ValueError):
            _uuid(text)
    else:
        assert _uuid(text) == expected


def test_only_the_canonical_text_is_reused() -> None:
    u = uuid4()
    assert canonical_id_text(str(u)) == str(u)
    for other in (str(u).upper(), u.hex, "{" + str(u) + "}", None, 42, str(u) + " "):
        assert canonical_id_text(other) is None
    # digits that int() reads as hex but str(UUID) never writes
    assert canonical_id_text("\u0660" * 8 + "-0000-0000-0000-" + "0" * 12) is None
