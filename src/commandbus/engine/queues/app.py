"""What a queue consumer needs from the component it serves (a worker, a coordinator)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

from commandbus.engine.db.connect import Conn, ResilientConnection


class Message(Protocol):
    """What a consumer reads: anything with the PGMQ message id."""

    @property
    def msg_id(self) -> int: ...


M = TypeVar("M", bound=Message)
O = TypeVar("O")  # noqa: E741 - an outcome


class ConsumerApp(Protocol[M, O]):
    """What a consumer needs from the component it serves."""

    async def prepare(self, conn: Conn) -> None:
        """Check and create what reading needs (on the reader's connection)."""

    async def read(self, conn: Conn, qty: int) -> Sequence[M]:
        """Take up to ``qty`` visible messages (they become invisible)."""

    async def next_visible(self, conn: Conn) -> float | None:
        """Seconds until the next delayed message becomes visible, if any."""

    async def handle(self, msg: M) -> O | None:
        """Process one message; an outcome to record, or ``None`` when it is done."""

    async def record(self, flusher: ResilientConnection, group: list[tuple[O, M]]) -> None:
        """Record a group of outcomes on a flusher's (reconnecting) connection."""

    async def release(self, conn: Conn, started: list[int], unstarted: list[int]) -> None:
        """Make held messages visible now (``unstarted`` ones give back their read)."""

    def suspect(self, msg: M) -> bool:
        """Whether an earlier delivery of ``msg`` ended without an outcome (a crash?)."""

    async def postpone(self, conn: Conn, msg_ids: list[int], seconds: float) -> None:
        """Hand messages back unread, visible again in ``seconds``."""
