"""A command's arguments checked (pure Python) and rendered as the message and event it sends."""

from __future__ import annotations

from collections.abc import Mapping
from uuid import UUID, uuid4

from commandbus.arguments import (
    MAX_INT,
    delay_arg,
    int_arg,
    mapping_arg,
    opt_uuid_arg,
    uuid_arg,
)
from commandbus.codec import dumps, dumps_limited
from commandbus.config import Config
from commandbus.engine.commands.envelope import encode_command, encode_headers
from commandbus.engine.commands.store import OutgoingCommand
from commandbus.engine.observability.logging import command_id_var, correlation_id_var
from commandbus.engine.queues.tables import QueueRegistry
from commandbus.names import validate_command_type, validate_domain, validate_queue_name

#: At most this many (domain, command type) pairs are remembered as valid.
_VALID_NAMES_KEPT = 10_000


class OutgoingRenderer:
    """Checks a command's arguments and renders its :class:`OutgoingCommand`.

    Remembers the (domain, command type) pairs it validated (up to
    :data:`_VALID_NAMES_KEPT`) and trusts the reply queues ``queues`` knows.
    """

    __slots__ = ("_config", "_queues", "_valid_names")

    def __init__(self, config: Config, queues: QueueRegistry) -> None:
        self._config = config
        self._queues = queues
        self._valid_names: set[tuple[str, str]] = set()

    def render(
        self,
        domain: object,
        command_type: object,
        data: object,
        *,
        command_id: object,
        correlation_id: object,
        causation_id: object,
        reply_to: object,
        saga_id: object,
        batch_id: UUID | None,
        max_attempts: object,
        delay: object,
        trace: dict[str, str],
    ) -> OutgoingCommand:
        """Check one command's arguments (pure Python) and render its message."""
        if (
            isinstance(domain, str)
            and isinstance(command_type, str)
            and (domain, command_type) in self._valid_names
        ):
            dom, ctype = domain, command_type
        else:
            dom, ctype = validate_domain(domain), validate_command_type(command_type)
            if len(self._valid_names) < _VALID_NAMES_KEPT:
                self._valid_names.add((dom, ctype))
        reply: str | None = None
        if reply_to is not None:
            if isinstance(reply_to, str) and self._queues.is_known(reply_to):
                reply = reply_to
            else:
                reply = validate_queue_name(reply_to, what="reply_to queue")
        payload = mapping_arg(data, "data")
        attempts = (
            self._config.max_attempts
            if max_attempts is None
            else int_arg(max_attempts, "max_attempts", low=1, high=MAX_INT)
        )
        delay_s = 0.0 if delay is None else delay_arg(delay)
        cid = uuid4() if command_id is None else uuid_arg(command_id, "command_id")
        # sent from a handler: the handled command's correlation id, and its id as
        # the cause, unless given
        if correlation_id is None:
            corr = correlation_id_var.get() or cid
        else:
            corr = uuid_arg(correlation_id, "correlation_id")
        if causation_id is None:
            caus = command_id_var.get()
        else:
            caus = opt_uuid_arg(causation_id, "causation_id")
        saga = opt_uuid_arg(saga_id, "saga_id")
        limit = self._config.max_payload_bytes
        data_json = dumps_limited(dict(payload), limit, what="command data")
        return assembled(
            domain=dom,
            command_id=cid,
            command_type=ctype,
            correlation_id=corr,
            causation_id=caus,
            reply_to=reply,
            saga_id=saga,
            batch_id=batch_id,
            max_attempts=attempts,
            delay_seconds=delay_s,
            data_json=data_json,
            trace=trace,
        )


def assembled(
    *,
    domain: str,
    command_id: UUID,
    command_type: str,
    correlation_id: UUID,
    causation_id: UUID | None,
    reply_to: str | None,
    saga_id: UUID | None,
    batch_id: UUID | None,
    max_attempts: int,
    delay_seconds: float,
    data_json: str,
    trace: Mapping[str, str],
) -> OutgoingCommand:
    """A command ready to insert, from values already checked: its queue message
    (the one wire format), trace headers and event metadata."""
    return OutgoingCommand(
        domain=domain,
        command_id=command_id,
        command_type=command_type,
        correlation_id=correlation_id,
        causation_id=causation_id,
        reply_to=reply_to,
        saga_id=saga_id,
        max_attempts=max_attempts,
        delay_seconds=delay_seconds,
        message=encode_command(
            command_id=command_id,
            command_type=command_type,
            correlation_id=correlation_id,
            causation_id=causation_id,
            reply_to=reply_to,
            saga_id=saga_id,
            batch_id=batch_id,
            max_attempts=max_attempts,
            data_json=data_json,
        ),
        headers=encode_headers(trace),
        metadata=dumps({"trace": dict(trace)}) if trace else "{}",
    )
