"""A command's arguments checked (pure Python) and rendered as the message and event it sends."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from uuid import UUID

from commandbus import codec
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
from commandbus.engine.commands.store import NewBatch, OutgoingCommand
from commandbus.engine.observability.logging import command_id_var, correlation_id_var
from commandbus.engine.queues.tables import QueueRegistry
from commandbus.errors import ValidationError
from commandbus.ids import new_id
from commandbus.models import CommandRequest
from commandbus.names import (
    batch_stream_id,
    validate_command_type,
    validate_domain,
    validate_queue_name,
)

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

    def queues(self, domain: object, command_type: object, reply_to: object) -> tuple[str, ...]:
        """The queues a command goes to (its domain's, its reply queue), its names
        checked as :meth:`render` checks them."""
        dom, _ctype = self._names(domain, command_type)
        reply = self._reply_to(reply_to)
        return (dom,) if reply is None else (dom, reply)

    def _names(self, domain: object, command_type: object) -> tuple[str, str]:
        if (
            isinstance(domain, str)
            and isinstance(command_type, str)
            and (domain, command_type) in self._valid_names
        ):
            return domain, command_type
        dom, ctype = validate_domain(domain), validate_command_type(command_type)
        if len(self._valid_names) < _VALID_NAMES_KEPT:
            self._valid_names.add((dom, ctype))
        return dom, ctype

    def _reply_to(self, reply_to: object) -> str | None:
        if reply_to is None:
            return None
        if isinstance(reply_to, str) and self._queues.is_known(reply_to):
            return reply_to
        return validate_queue_name(reply_to, what="reply_to queue")

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
        dom, ctype = self._names(domain, command_type)
        reply = self._reply_to(reply_to)
        payload = mapping_arg(data, "data")
        attempts = (
            self._config.max_attempts
            if max_attempts is None
            else int_arg(max_attempts, "max_attempts", low=1, high=MAX_INT)
        )
        delay_s = 0.0 if delay is None else delay_arg(delay)
        cid = new_id() if command_id is None else uuid_arg(command_id, "command_id")
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


#: A batch goes to the server in statements of at most this many commands, in one
#: pipeline and one transaction: the server inserts a part while the next is
#: checked and rendered. (Parts of 75-150 did best in alternating runs of 50 to
#: 500 on a 2-core machine; a single statement of 1,000 did worse than any.)
PART_COMMANDS = 100


class BatchParts:
    """The commands of a batch, checked and rendered part by part as it is iterated.

    A part holds at most :data:`PART_COMMANDS` commands and a quarter of
    ``MAX_STATEMENT_JSON_BYTES`` in characters of JSON (a character is at most four
    bytes), so a batch of any size goes in statements the server takes. A command
    id repeated within the batch ends the parts (:attr:`repeated` lists them), but
    every command is still checked; a bad argument raises, naming ``commands[i]``.
    After the iteration (or :meth:`prepare`), :attr:`outs` holds every command.
    """

    def __init__(
        self,
        render: Callable[..., OutgoingCommand],
        requests: Sequence[CommandRequest],
        *,
        batch_id: UUID,
        correlation_id: UUID,
        name: str | None,
        trace: dict[str, str],
    ) -> None:
        self._render = render
        self._requests = requests
        self._batch_id = batch_id
        self._correlation_id = correlation_id
        self._name = name
        self._trace = trace
        self.outs: list[OutgoingCommand] = []
        self.repeated: list[str] = []
        self._prepared: list[list[OutgoingCommand]] | None = None

    def prepare(self) -> None:
        """Check and render every command now (iterating then yields the parts made)."""
        if self._prepared is None:
            self._prepared = list(self._parts())

    def __iter__(self) -> Iterator[list[OutgoingCommand]]:
        return iter(self._prepared) if self._prepared is not None else self._parts()

    def _parts(self) -> Iterator[list[OutgoingCommand]]:
        seen: set[tuple[str, UUID]] = set()
        part: list[OutgoingCommand] = []
        chars = 0
        budget = codec.MAX_STATEMENT_JSON_BYTES // 4
        for i, r in enumerate(self._requests):
            try:
                out = self._render(
                    r.domain,
                    r.command_type,
                    r.data,
                    command_id=r.command_id,
                    correlation_id=self._correlation_id
                    if r.correlation_id is None
                    else r.correlation_id,
                    causation_id=r.causation_id,
                    reply_to=r.reply_to,
                    saga_id=r.saga_id,
                    batch_id=self._batch_id,
                    max_attempts=r.max_attempts,
                    delay=r.delay,
                    trace=self._trace,
                )
            except ValidationError as exc:
                raise type(exc)(f"commands[{i}]: {exc.message}", details=exc.details) from None
            self.outs.append(out)
            key = (out.domain, out.command_id)
            if key in seen:
                self.repeated.append(str(out.command_id))
            seen.add(key)
            if self.repeated:
                continue  # nothing more is sent: the batch is refused
            size = len(out.message) + len(out.headers) + len(out.metadata)
            if part and (len(part) == PART_COMMANDS or chars + size > budget):
                yield part
                part, chars = [], 0
            part.append(out)
            chars += size
        if part and not self.repeated:
            yield part

    def batch(self) -> NewBatch | None:
        """The batch to create once every part is sent (None: a command id repeats)."""
        if self.repeated:
            return None
        data = {
            "batch_id": str(self._batch_id),
            "name": self._name,
            "total": len(self.outs),
            "domains": sorted({o.domain for o in self.outs}),
        }
        return NewBatch(
            stream_id=batch_stream_id(self._batch_id),
            data=dumps(data),
            correlation_id=self._correlation_id,
        )
