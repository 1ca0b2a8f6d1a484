"""What a saga sends: its commands, whose ids derive from the saga, and its timers."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any
from uuid import UUID

import attrs
from uuid_utils.compat import uuid8

from commandbus.engine.commands.outgoing import assembled
from commandbus.engine.commands.store import OutgoingCommand
from commandbus.sagas.definition import SAGA_QUEUE

#: Namespace of the ids derived for saga commands and idempotent starts.
SAGA_NAMESPACE = UUID("6f1c1d2e-6a53-4c55-9a43-2f8c9d7b1e01")


def command_id_for(saga_id: UUID, n: int) -> UUID:
    """The id of a saga's ``n``-th command: the same on every replay of a decision.

    A version 8 UUID (RFC 9562): the saga id's first 48 bits, which in a time-ordered
    saga id (:func:`commandbus.ids.new_id`) are its creation time, then 74 bits of a
    SHA-1 of the namespace, the saga id and ``n``. So a saga's commands sort by when
    their saga started, and their rows land near the right edge of the indexes they
    key, as other commands' do.
    """
    digest = int.from_bytes(hashlib.sha1(SAGA_NAMESPACE.bytes + f"{saga_id}/{n}".encode()).digest())
    return uuid8(saga_id.int >> 80, (digest >> 148) & 0xFFF, digest & (1 << 62) - 1)


def saga_id_for_key(name: str, key: str) -> UUID:
    """The saga id an idempotency key stands for (per saga name)."""
    return uuid.uuid5(SAGA_NAMESPACE, f"key/{name}/{key}")


def saga_command(
    *,
    saga_id: UUID,
    command_id: UUID,
    domain: str,
    command_type: str,
    correlation_id: UUID,
    causation_id: UUID | None,
    max_attempts: int,
    data_json: str,
    trace: dict[str, str],
) -> OutgoingCommand:
    """A command of a saga, ready to insert: its replies go to the saga queue."""
    return assembled(
        domain=domain,
        command_id=command_id,
        command_type=command_type,
        correlation_id=correlation_id,
        causation_id=causation_id,
        reply_to=SAGA_QUEUE,
        saga_id=saga_id,
        batch_id=None,
        max_attempts=max_attempts,
        delay_seconds=0.0,
        data_json=data_json,
        trace=trace,
    )


@attrs.frozen(kw_only=True)
class Timer:
    """A step's durable timer: a delayed message to the saga queue."""

    step: str
    command_id: UUID
    seconds: float
    #: the SagaStepStarted event's data, where the timer's message id goes
    event_data: dict[str, Any]
    #: the W3C context of the step's send, which the timer's message carries (so a
    #: timeout joins the saga's trace)
    trace: dict[str, str] = attrs.field(factory=dict)
