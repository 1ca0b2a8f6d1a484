"""Commands sent to a domain this process serves: claimed as they are sent, handed
over once their transaction commits (no wake-up, no read).

When a worker's outcome moves a saga (``Worker(..., sagas=registry)``), the saga's
next commands are sent in the outcome's transaction. If a worker of this process
(the same event loop and database URL) serves a command's domain and has room, the
message is inserted already taken: read once, invisible for that consumer's
visibility timeout, with no wake-up for the domain's readers. Once the transaction
has committed, the message goes to that consumer as its read would have given it,
and the next step starts without a NOTIFY and a read in between.

Nothing changes what is stored: the same command, event and status row; only the
queue row starts out read. A consumer takes no more than it has room for (what a
read would take), and none while it stops or runs a suspect alone; what it does
not take is made visible again at once (and the domain woken). If the process
dies first, or the connection is lost as the transaction commits (so that the
worker cannot know what it claimed), they come back after the visibility timeout,
as a read message would, and run as suspects (their delivery ended without an
outcome).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Sequence
from typing import Any, Protocol
from uuid import UUID

from commandbus.codec import loads
from commandbus.engine.commands.store import OutgoingCommand, ReadMessage


class Serving(Protocol):
    """A consumer of one domain that can take messages claimed for it."""

    @property
    def vt_seconds(self) -> float:
        """How long a message it takes stays invisible (its visibility timeout)."""
        ...

    def room(self) -> int:
        """How many more messages it would take now (0: none, e.g. it is stopping)."""
        ...

    def adopt(self, msgs: Sequence[ReadMessage]) -> int:
        """Take as many of ``msgs`` as it has room for, as if read; how many (the first)."""
        ...


_Key = tuple[str, str]  # (database URL, domain)
_served: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[_Key, list[Serving]]] = (
    weakref.WeakKeyDictionary()
)


def serve(url: str, domain: str, consumer: Serving) -> None:
    """``consumer`` (running in this event loop) takes claimed messages of ``domain``."""
    loop = asyncio.get_running_loop()
    served = _served.setdefault(loop, {}).setdefault((url, domain), [])
    if consumer not in served:
        served.append(consumer)


def unserve(url: str, domain: str, consumer: Serving) -> None:
    """``consumer`` takes no more claimed messages (safe to call more than once)."""
    by_key = _served.get(asyncio.get_running_loop(), {})
    served = by_key.get((url, domain), [])
    if consumer in served:
        served.remove(consumer)
    if not served:
        by_key.pop((url, domain), None)


class Claims:
    """The messages one transaction claims: decided before it runs, handed over after
    it committed (:meth:`hand_over`)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._by_domain: dict[str, Serving] = {}
        self._commands: dict[UUID, OutgoingCommand] = {}
        #: the index, among the statements planned, of the send that claims (whose
        #: row has the command ids sent and their message ids), if any
        self.statement: int | None = None
        #: once committed: the command ids sent and their message ids
        self.sent: tuple[Sequence[UUID], Sequence[int]] | None = None

    def reset(self) -> None:
        """Forget what was claimed (the transaction is tried again, or was undone)."""
        self._by_domain.clear()
        self._commands.clear()
        self.statement = None
        self.sent = None

    def claim(self, commands: Sequence[OutgoingCommand]) -> dict[str, float]:
        """The domains of ``commands`` whose messages are claimed, each for its
        consumer's visibility timeout: those served here by a consumer with room for
        all of them (the one with the most room), every one due now (a delayed one
        is sent as usual, and so are the others to its domain)."""
        by_key = _served.get(asyncio.get_running_loop())
        if not by_key:
            return {}
        count: dict[str, int] = {}
        for c in commands:
            count[c.domain] = count.get(c.domain, 0) + 1
        delayed = {c.domain for c in commands if c.delay_seconds > 0}
        claims: dict[str, float] = {}
        for domain in sorted(count.keys() - delayed):
            best: tuple[int, Serving] | None = None
            for consumer in by_key.get((self._url, domain), ()):
                room = consumer.room()
                if room >= count[domain] and (best is None or room > best[0]):
                    best = (room, consumer)
            if best is not None:
                claims[domain] = best[1].vt_seconds
                self._by_domain[domain] = best[1]
        for c in commands:
            if c.domain in claims:
                self._commands[c.command_id] = c
        return claims

    def hand_over(
        self, command_ids: Sequence[UUID], msg_ids: Sequence[int]
    ) -> dict[str, list[int]]:
        """The transaction that sent these commands (with their message ids)
        committed: hand each claimed one to its domain's consumer; returns, by
        domain, the message ids its consumer did not take (it stopped, or is full
        meanwhile), to be made visible again."""
        msgs: dict[str, list[ReadMessage]] = {}
        for command_id, msg_id in zip(command_ids, msg_ids, strict=True):
            c = self._commands.get(command_id)
            if c is not None:
                msgs.setdefault(c.domain, []).append(_as_read(c, msg_id))
        refused: dict[str, list[int]] = {}
        for domain, claimed in msgs.items():
            taken = self._by_domain[domain].adopt(claimed)
            if taken < len(claimed):
                refused[domain] = [m.msg_id for m in claimed[taken:]]
        return refused


def _as_read(c: OutgoingCommand, msg_id: int) -> ReadMessage:
    """The message as the domain's read would return it: read once, a new command."""
    headers: Any = loads(c.headers)
    return ReadMessage(
        msg_id=msg_id,
        read_ct=1,
        message=loads(c.message),
        headers=headers or None,
        version=1,
        attempts=0,
        status="PENDING",
    )
