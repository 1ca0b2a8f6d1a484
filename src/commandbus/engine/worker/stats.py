"""What a worker did, counted."""

from __future__ import annotations

import time
from collections.abc import Sequence

import attrs

_COUNTS = (
    "completed",
    "failed",
    "retried",
    "troubleshooting",
    "quarantined",
    "duplicate_deliveries",
    "released",
    "inline_replies",
    "handed_over",
)


@attrs.define
class WorkerStats:
    """Counts of what a worker did; ``run()`` returns them when it stops.

    A worker serving several domains returns the sums, with each domain's own
    counts in :attr:`by_domain`.
    """

    domain: str
    completed: int = 0
    failed: int = 0
    retried: int = 0
    troubleshooting: int = 0
    quarantined: int = 0
    #: deliveries whose outcome was not recorded because another delivery's was
    duplicate_deliveries: int = 0
    released: int = 0
    #: replies acted on in the outcome's own transaction (saga steps moved on at once)
    inline_replies: int = 0
    #: messages not read but handed over, claimed as a worker of this process sent
    #: them (a saga's next step, sent in its previous step's outcome transaction)
    handed_over: int = 0
    started_at: float = attrs.field(factory=time.monotonic)
    stopped_at: float | None = None
    #: each domain's stats, for a worker of several domains (else empty)
    by_domain: dict[str, WorkerStats] = attrs.field(factory=dict)

    @classmethod
    def combine(cls, parts: Sequence[WorkerStats]) -> WorkerStats:
        """The sums of several domains' stats (``domain``: their names, comma-separated)."""
        stopped = [p.stopped_at for p in parts]
        total = cls(
            domain=",".join(p.domain for p in parts),
            started_at=min(p.started_at for p in parts),
            stopped_at=None if None in stopped else max(s for s in stopped if s is not None),
            by_domain={p.domain: p for p in parts},
        )
        for name in _COUNTS:
            setattr(total, name, sum(getattr(p, name) for p in parts))
        return total

    @property
    def conflicts(self) -> int:
        """Deprecated name of :attr:`duplicate_deliveries`."""
        return self.duplicate_deliveries

    @property
    def processed(self) -> int:
        return self.completed + self.failed + self.retried + self.troubleshooting

    def summary(self) -> str:
        """One line: what was processed, how, and in how long (then per domain)."""
        elapsed = (self.stopped_at or time.monotonic()) - self.started_at
        line = (
            f"worker {self.domain}: {self.processed} processed in {elapsed:.1f}s "
            f"(completed {self.completed}, failed {self.failed}, retried {self.retried}, "
            f"troubleshooting {self.troubleshooting}, quarantined {self.quarantined}, "
            f"duplicate deliveries {self.duplicate_deliveries}, released {self.released})"
        )
        if self.inline_replies:
            line += f"; {self.inline_replies} saga replies acted on in the outcome's transaction"
        if self.handed_over:
            line += f"; {self.handed_over} messages handed over in-process instead of read"
        if self.by_domain:
            line += "; " + ", ".join(
                f"{d}: {s.processed} processed" for d, s in self.by_domain.items()
            )
        return line
