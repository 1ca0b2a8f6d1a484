"""The library's metric instruments (counters, the handler duration histogram and the
queue gauges), on one meter."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Final

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


def _queue_attributes(queue: str) -> dict[str, str]:
    return {"messaging.system": "pgmq", "messaging.destination.name": queue}


#: The readings of this process's consumers (one set per process, like the providers).
queue_readings: Final = QueueReadings()


class _Instruments:
    """The library's metric instruments, on one meter."""

    def __init__(self, meter: metrics.Meter) -> None:
        self.sent = meter.create_counter(
            "commandbus.commands.sent",
            unit="{command}",
            description="Commands sent (send and send_batch), by domain and type",
        )
        self.processed = meter.create_counter(
            "commandbus.commands.processed",
            unit="{command}",
            description="Deliveries handled by workers, by domain, type and outcome",
        )
        self.failed = meter.create_counter(
            "commandbus.commands.failed",
            unit="{command}",
            description=(
                "Deliveries that ended a command as failed (a business rule) or in the "
                "troubleshooting queue, by domain, type, outcome and error.type"
            ),
        )
        self.retried = meter.create_counter(
            "commandbus.commands.retried",
            unit="{command}",
            description="Deliveries that scheduled a retry, by domain, type and error.type",
        )
        self.duration = meter.create_histogram(
            "commandbus.handler.duration",
            unit="s",
            description="Time to handle a delivery (the handler and its outcome), by outcome",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self.saga_transitions = meter.create_counter(
            "commandbus.saga.transitions",
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
        self.saga_compensations = meter.create_counter(
            "commandbus.saga.compensations",
            unit="{command}",
            description="Compensation commands sent, by saga name and step",
        )
