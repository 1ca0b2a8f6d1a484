"""The library's metric instruments (counters and the handler duration histogram), on one meter."""

from __future__ import annotations

from typing import Final

from opentelemetry import metrics

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
        self.saga_compensations = meter.create_counter(
            "commandbus.saga.compensations",
            unit="{command}",
            description="Compensation commands sent, by saga name and step",
        )
