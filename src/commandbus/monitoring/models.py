"""What a status snapshot holds: frozen attrs classes, JSON-ready with the codec.

Times are the database server's (``taken_at`` is when the snapshot was read), so
an age is ``taken_at - <time>``, whatever the reader's own clock says.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal
from uuid import UUID

import attrs

#: What a consumer or process is: beating (live), stopped gracefully, or silent
#: for more than a few of its heartbeat intervals (gone: killed, hung or cut off).
State = Literal["live", "stopped", "gone"]
#: A worker serves a domain's queue; a coordinator serves the saga queue.
Kind = Literal["worker", "coordinator"]


@attrs.frozen(kw_only=True)
class StatusCounts:
    """How many commands (or sagas) are in each status, every status listed.

    Counting stops at the snapshot's ``count_limit``: a status in ``over_limit``
    has more than its count says (the count is the limit).
    """

    counts: dict[str, int]
    over_limit: tuple[str, ...] = ()

    def text(self, status: str) -> str:
        """The count of ``status`` for people: ``12``, or ``100000+`` past the limit."""
        n = self.counts.get(status, 0)
        return f"{n}+" if status in self.over_limit else str(n)


@attrs.frozen(kw_only=True)
class QueueDepth:
    """A queue's messages by what they wait for."""

    #: visible now: waiting for a consumer to read them
    ready: int
    #: since when the oldest ready message has been visible (None: none is ready)
    oldest_ready_at: datetime | None
    #: read by a consumer, outcome not recorded yet (invisible until then)
    in_flight: int
    #: not visible yet: retries waiting out their backoff, delayed sends, timers
    scheduled: int


@attrs.frozen(kw_only=True)
class DomainStatus:
    """One domain: its queue, its commands by status, and the live workers serving it."""

    domain: str
    queue: QueueDepth
    commands: StatusCounts
    #: live worker consumers of the domain (one per process serving it)
    live_workers: int
    #: handlers those workers may run at once, together
    concurrency: int

    @property
    def troubleshooting(self) -> int:
        """Commands in the troubleshooting queue (TSQ), waiting for an operator."""
        return self.commands.counts.get("IN_TROUBLESHOOTING_QUEUE", 0)


@attrs.frozen(kw_only=True)
class ConsumerStatus:
    """One queue consumer of a process, as its heartbeat row says."""

    consumer_id: UUID
    kind: Kind
    queue: str
    concurrency: int
    #: how often it beats; it counts as gone after a few missed beats
    heartbeat_seconds: float
    started_at: datetime
    last_seen_at: datetime
    stopped_at: datetime | None
    state: State


@attrs.frozen(kw_only=True)
class ProcessStatus:
    """A worker or coordinator process: its consumers (a worker has one per domain)."""

    process_id: UUID
    host: str
    pid: int
    #: ``worker``, ``coordinator``, or ``worker+coordinator`` (both in one process)
    kind: str
    #: the queues it serves (a worker's domains; the saga queue for a coordinator)
    queues: tuple[str, ...]
    concurrency: int
    started_at: datetime
    last_seen_at: datetime
    #: when its last consumer stopped, if every one did
    stopped_at: datetime | None
    #: live while any consumer beats; else stopped if every one stopped, else gone
    state: State
    consumers: tuple[ConsumerStatus, ...]


@attrs.frozen(kw_only=True)
class SagaSummary:
    """Sagas by status, the saga queue, and the coordinators alive."""

    sagas: StatusCounts
    #: the saga queue (replies, timers, operators' requests); None before it exists
    queue: QueueDepth | None
    live_coordinators: int


@attrs.frozen(kw_only=True)
class SystemStatus:
    """The whole system at one moment: :func:`~commandbus.monitoring.system_status`."""

    #: when the snapshot was read, on the database server's clock
    taken_at: datetime
    database: str
    domains: tuple[DomainStatus, ...]
    sagas: SagaSummary
    #: processes alive, and those that stopped or went silent in the last hour
    processes: tuple[ProcessStatus, ...]
    #: what needs a look, one line each (e.g. pending commands no live worker serves)
    attention: tuple[str, ...]
    #: the most each status count counts (see :class:`StatusCounts`)
    count_limit: int

    def age(self, at: datetime) -> timedelta:
        """How long before the snapshot ``at`` was (never negative)."""
        return max(timedelta(0), self.taken_at - at)

    def domain(self, name: str) -> DomainStatus | None:
        """The status of one domain (None if it has no queue)."""
        return next((d for d in self.domains if d.domain == name), None)
