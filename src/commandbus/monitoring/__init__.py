"""Monitoring: the whole system at a glance (``commandbus status``, dashboards).

Reads the status tables of commands and sagas, the PGMQ queues and the
consumers' heartbeats; writes nothing. May import every layer below it (sagas,
the engine); only the command line (and what sits above it) imports it.
"""

from commandbus.monitoring.activity import (
    IdMatch,
    MinuteCounts,
    Throughput,
    bounded,
    find_id,
    throughput,
)
from commandbus.monitoring.attention import age_text
from commandbus.monitoring.batches import BatchPage, list_batches
from commandbus.monitoring.models import (
    ConsumerStatus,
    DomainStatus,
    ProcessStatus,
    QueueDepth,
    SagaSummary,
    StatusCounts,
    SystemStatus,
)
from commandbus.monitoring.read import system_status

__all__ = [
    "BatchPage",
    "ConsumerStatus",
    "DomainStatus",
    "IdMatch",
    "MinuteCounts",
    "ProcessStatus",
    "QueueDepth",
    "SagaSummary",
    "StatusCounts",
    "SystemStatus",
    "Throughput",
    "age_text",
    "bounded",
    "find_id",
    "list_batches",
    "system_status",
    "throughput",
]
