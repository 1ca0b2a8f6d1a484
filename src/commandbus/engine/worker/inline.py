"""Replies a worker takes in the transaction that records their commands' outcomes.

A command that names a reply queue gets its reply as a message in that queue,
written with its outcome. A worker given something that can act on those
replies at once (the saga registry, ``Worker(..., sagas=registry)``) lets it do
so in the same transaction instead: the reply's effect (a saga's transition, the
next command) commits with the outcome, and no message makes a second hop. What
it does not take (it declines, or a concurrent writer moved its saga first) is
sent as the message it would have been. This module is the contract only; the
saga package implements it (the worker never imports it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from commandbus.config import Config
from commandbus.engine.commands.store import Reply
from commandbus.engine.db.connect import Conn
from commandbus.engine.db.script import Query
from commandbus.engine.worker.handoff import Claims


class Taken(Protocol):
    """What :meth:`InlineReplies.take` did, pending the transaction's commit."""

    @property
    def taken(self) -> frozenset[int]:
        """Indexes (into the replies given) of the replies acted on."""
        ...

    def committed(self) -> None:
        """Called once the transaction that took them has committed."""
        ...


#: What :meth:`InlineReplies.plan` returns: the statements that act on the replies
#: (for a :class:`~commandbus.engine.db.script.Script`, each failing unless it applies
#: in full) and what they take once committed.
Planned = tuple[Sequence[tuple[Query, Mapping[str, Any] | None]], Taken]


class InlineReplies(Protocol):
    """Acts on replies to one queue inside the caller's transaction."""

    @property
    def queue(self) -> str:
        """The reply queue whose replies it takes."""
        ...

    @property
    def what(self) -> str:
        """What it acts for, for the worker's start line (``sagas order v1, ...``)."""
        ...

    async def prepare(self, conn: Conn) -> None:
        """Make sure what it writes to exists (called as the worker starts)."""
        ...

    async def take(self, conn: Conn, replies: Sequence[Reply]) -> Taken:
        """Act on what it can of ``replies`` in the caller's open transaction."""
        ...

    async def plan(
        self, conn: Conn, replies: Sequence[Reply], claims: Claims | None = None
    ) -> Planned | None:
        """What :meth:`take` would do, as statements to run at once with the outcomes,
        assuming they are all recorded (``conn`` is only read; None: not this way).
        The commands it sends may be claimed for this process's consumers through
        ``claims`` (see :mod:`~commandbus.engine.worker.handoff`)."""
        ...


class InlineSource(Protocol):
    """Something a worker can be given (``sagas=``) to make an :class:`InlineReplies`."""

    def inline_replies(self, config: Config) -> InlineReplies: ...
