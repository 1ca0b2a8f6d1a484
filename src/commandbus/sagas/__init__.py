"""Sagas: definitions, the coordinator (a queue consumer over the saga queue), their store.

May import the engine's commands, queues, eventstore and db; the engine never imports it.
"""

from commandbus.sagas.client import SagaClient, SagaStart, StartedSaga
from commandbus.sagas.coordinator import Coordinator, CoordinatorStats
from commandbus.sagas.decide import SAGA_QUEUE
from commandbus.sagas.definition import (
    Compensation,
    Parallel,
    Saga,
    SagaContext,
    SagaRegistry,
    Step,
)
from commandbus.sagas.preview import CancelPreview, PlannedCompensation
from commandbus.sagas.read import SagaFilter, SagaPage, SagaRecord
from commandbus.sagas.replay import SagaDifference, SagaVerifyReport
from commandbus.sagas.state import SagaStatus, StepState, StepStatus

__all__ = [
    "SAGA_QUEUE",
    "CancelPreview",
    "Compensation",
    "Coordinator",
    "CoordinatorStats",
    "Parallel",
    "PlannedCompensation",
    "Saga",
    "SagaClient",
    "SagaContext",
    "SagaDifference",
    "SagaFilter",
    "SagaPage",
    "SagaRecord",
    "SagaRegistry",
    "SagaStart",
    "SagaStatus",
    "SagaVerifyReport",
    "StartedSaga",
    "Step",
    "StepState",
    "StepStatus",
]
