"""CommandFilter: checked and normalised when built, frozen."""

from __future__ import annotations

from uuid import UUID, uuid4

import attrs
import pytest

from commandbus import CommandFilter, CommandStatus, InvalidNameError, ValidationError


def test_command_filter_normalises_and_is_frozen() -> None:
    cid = uuid4()
    f = CommandFilter(status="PENDING", correlation_id=str(cid).upper(), batch_id=cid.hex)
    assert f.status is CommandStatus.PENDING
    assert f.correlation_id == cid and isinstance(f.correlation_id, UUID)
    assert f.batch_id == cid
    assert CommandFilter() == CommandFilter(domain=None)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        f.domain = "payments"  # type: ignore[misc]
    assert attrs.evolve(f, domain="payments").domain == "payments"


@pytest.mark.parametrize(
    ("kwargs", "named", "error"),
    [
        ({"domain": "Bad Name"}, "domain", InvalidNameError),
        ({"command_type": 5}, "command type", InvalidNameError),
        ({"status": "pending"}, "status", ValidationError),
        ({"correlation_id": "x"}, "correlation_id", ValidationError),
        ({"batch_id": 5}, "batch_id", ValidationError),
        ({"error_contains": "a\x00"}, "error_contains", ValidationError),
    ],
)
def test_a_bad_criterion_is_refused_naming_it(
    kwargs: dict[str, object], named: str, error: type[Exception]
) -> None:
    with pytest.raises(error, match=named):
        CommandFilter(**kwargs)  # type: ignore[arg-type]
