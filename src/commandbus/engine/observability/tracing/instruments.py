"""The library's metric instruments (counters, the handler duration histogram and the
queue gauges), on one meter.

The counters are :class:`Tally` objects: the hot path adds to a dict in the
process (a fraction of a microsecond) and an observable counter reports the
running totals when the metric reader collects, instead of a synchronous
``Counter.add`` per message (several microseconds each in the SDK).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Final, TypeAlias

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

#: Handler duration buckets, in seconds.
_DURATION_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


class QueueReadings:
    """The latest reading of each queue a consumer of this process serves.

    Consumers write them (with their heartbeat); the metric reader's thread reads
    them when it collects the gauges, so a collection never queries the database.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._readings: dict[str, tuple[int, float]] = {}

    def observe(self, queue: str, ready: int, oldest_age: float) -> None:
        with self._lock:
            self._readings[queue] = (ready, oldest_age)

    def forget(self, queue: str) -> None:
        with self._lock:
            self._readings.pop(queue, None)

    def snapshot(self) -> dict[str, tuple[int, float]]:
        with self._lock:
            return dict(self._readings)

    def depth(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(r[0], _queue_attributes(q)) for q, r in self.snapshot().items()]

    def oldest_age(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(r[1], _queue_attributes(q)) for q, r in self.snapshot().items()]


#: A counter's attribute set, as ``((name, value), ...)`` in a fixed order (hashable).
TallyKey: TypeAlias = tuple[tuple[str, str], ...]


class Tally:
    """A monotonic counter kept in the process, reported by an observable counter.

    :meth:`add` is what the hot path calls; the metric reader's thread calls
    :meth:`observe` when it collects and gets the running total of each
    attribute set (an observable counter reports cumulative values).
    """

    __slots__ = ("_counts", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[TallyKey, int] = {}

    def add(self, key: TallyKey, amount: int = 1) -> None:
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + amount

    def totals(self) -> dict[TallyKey, int]:
        with self._lock:
            return dict(self._counts)

    def observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(total, dict(key)) for key, total in self.totals().items()]


def _queue_attributes(queue: str) -> dict[str, str]:
    return {"messaging.system": "pgmq", "messaging.destination.name": queue}


#: The readings of this process's consumers (one set per process, like the providers).
queue_readings: Final = QueueReadings()


class _Instruments:
    """The library's metric instruments, on one meter."""

    def __init__(self, meter: metrics.Meter) -> None:
        self.sent = Tally()
        meter.create_observable_counter(
            "commandbus.commands.sent",
            callbacks=[self.sent.observe],
            unit="{command}",
            description="Commands sent (send and send_batch), by domain and type",
        )
        self.processed = Tally()
        meter.create_observable_counter(
            "commandbus.commands.processed",
            callbacks=[self.processed.observe],
            unit="{command}",
            description="Deliveries handled by workers, by domain, type and outcome",
        )
        self.failed = Tally()
        meter.create_observable_counter(
            "commandbus.commands.failed",
            callbacks=[self.failed.observe],
            unit="{command}",
            description=(
                "Deliveries that ended a command as failed (a business rule) or in the "
                "troubleshooting queue, by domain, type, outcome and error.type"
            ),
        )
        self.retried = Tally()
        meter.create_observable_counter(
            "commandbus.commands.retried",
            callbacks=[self.retried.observe],
            unit="{command}",
            description="Deliveries that scheduled a retry, by domain, type and error.type",
        )
        self.duration = meter.create_histogram(
            "commandbus.handler.duration",
            unit="s",
            description="Time to handle a delivery (the handler and its outcome), by outcome",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self.saga_transitions = Tally()
        meter.create_observable_counter(
            "commandbus.saga.transitions",
            callbacks=[self.saga_transitions.observe],
            unit="{transition}",
            description="Saga transitions committed, by saga name and the status they left",
        )
        self.queue_depth = meter.create_observable_gauge(
            "commandbus.queue.depth",
            callbacks=[queue_readings.depth],
            unit="{message}",
            description=(
                "Messages ready to be read in a queue this process consumes, as of its "
                "consumer's last heartbeat, by messaging.destination.name"
            ),
        )
        self.queue_oldest_age = meter.create_observable_gauge(
            "commandbus.queue.oldest_age",
            callbacks=[queue_readings.oldest_age],
            unit="s",
            description=(
                "How long the longest-waiting ready message of a queue this process "
                "consumes has been visible (0 when none waits), as of its consumer's "
                "last heartbeat, by messaging.destination.name"
            ),
        )
        self.saga_compensations = Tally()
        meter.create_observable_counter(
            "commandbus.saga.compensations",
            callbacks=[self.saga_compensations.observe],
            unit="{command}",
            description="Compensation commands sent, by saga name and step",
        )
        #: The duration histogram's attribute dicts, one per (domain, type, outcome):
        #: built once, not per delivery.
        self.duration_attributes: dict[tuple[str, str, str], dict[str, str]] = {}
