"""What a worker did, counted."""

from __future__ import annotations

import time

import attrs


@attrs.define
class WorkerStats:
    """Counts of what a worker did; ``run()`` returns them when it stops."""

    domain: str
    completed: int = 0
    failed: int = 0
    retried: int = 0
    troubleshooting: int = 0
    quarantined: int = 0
    #: deliveries whose outcome was not recorded because another delivery's was
    duplicate_deliveries: int = 0
    released: int = 0
    started_at: float = attrs.field(factory=time.monotonic)
    stopped_at: float | None = None

    @property
    def conflicts(self) -> int:
        """Deprecated name of :attr:`duplicate_deliveries`."""
        return self.duplicate_deliveries

    @property
    def processed(self) -> int:
        return self.completed + self.failed + self.retried + self.troubleshooting

    def summary(self) -> str:
        elapsed = (self.stopped_at or time.monotonic()) - self.started_at
        return (
            f"worker {self.domain}: {self.processed} processed in {elapsed:.1f}s "
            f"(completed {self.completed}, failed {self.failed}, retried {self.retried}, "
            f"troubleshooting {self.troubleshooting}, quarantined {self.quarantined}, "
            f"duplicate deliveries {self.duplicate_deliveries}, released {self.released})"
        )
