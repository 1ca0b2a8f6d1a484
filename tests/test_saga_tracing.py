"""A saga is ONE trace: its start, every step's send and process spans, every
transition and compensation, all carrying the correlation id."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from commandbus import SagaStatus
from commandbus.engine.observability import tracing
from saga_apps import ORDER, running
from support import wait_for


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with tracing.use_providers(provider, None):
        yield exporter
    provider.shutdown()


async def _final(h: Any, saga_id: Any) -> Any:
    async def done() -> bool:
        rec = await h.sagas.get_saga(saga_id)
        return rec is not None and rec.status.is_final

    await wait_for(done, timeout=20)
    return await h.sagas.get_saga(saga_id)


async def test_a_compensated_saga_is_one_trace_with_its_compensations(
    dsn: str, spans: InMemorySpanExporter
) -> None:
    async with running(dsn) as h:
        started = await h.sagas.start_saga(
            ORDER, {"order_id": "tr1", "behaviour": {"Ship": "business"}}
        )
        rec = await _final(h, started.saga_id)
        # the last transition's span ends just after its commit is decided
        await wait_for(
            lambda: any(s.name == "compensate reserve" for s in spans.get_finished_spans())
        )
    assert rec.status is SagaStatus.COMPENSATED
    mine = [
        s
        for s in spans.get_finished_spans()
        if (s.attributes or {}).get("messaging.message.conversation_id") == str(rec.correlation_id)
    ]
    names = [s.name for s in mine]
    assert "start saga order" in names
    assert "compensate charge" in names and "compensate reserve" in names
    assert {f"process {d}" for d in ("inventory", "payments", "shipping")} <= set(names)
    assert sum(n == "saga order transition" for n in names) >= 4
    # one trace, every span's parent inside it (except the root)
    assert len({s.context.trace_id for s in mine}) == 1
    ids = {s.context.span_id for s in mine}
    roots = [s for s in mine if s.parent is None or s.parent.span_id not in ids]
    assert [s.name for s in roots] == ["start saga order"]
    kinds = {s.name: s.kind for s in mine}
    assert kinds["start saga order"] is SpanKind.PRODUCER
    assert kinds["saga order transition"] is SpanKind.CONSUMER
    assert kinds["process shipping"] is SpanKind.CONSUMER
    # the failing step's process span and the transition that compensates are errors
    ship = next(s for s in mine if s.name == "process shipping")
    assert ship.status.status_code is StatusCode.ERROR
    failing = [
        s
        for s in mine
        if s.name == "saga order transition"
        and "SagaCompensationStarted" in str((s.attributes or {}).get("commandbus.saga_events"))
    ]
    assert len(failing) == 1 and failing[0].status.status_code is StatusCode.ERROR
    # a compensation is a child of the transition that decided it
    comp = next(s for s in mine if s.name == "compensate charge")
    parent = next(s for s in mine if s.context.span_id == comp.parent.span_id)  # type: ignore[union-attr]
    assert parent.name == "saga order transition"
