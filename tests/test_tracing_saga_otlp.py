"""A saga across three domains is ONE trace, exported from SEPARATE processes.

The sender (starting the order saga through ``SagaClient``), a worker process for
inventory and payments, one for shipping, and the coordinator each run as their
own process (``tests/saga_otlp_process.py``), set up by ``COMMANDBUS_OTEL=1``
alone and exporting with the real OTLP/HTTP exporter to the receiver of
``test_tracing_otlp`` (decoding ``ExportTraceServiceRequest``). Every process
buffers its spans until it exits. Shipping breaks a business rule, so the saga
compensates (refund, then release).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from commandbus import CommandBus, SagaClient, SagaStatus
from support import wait_for
from test_tracing_otlp import Received, Receiver, _env, _ready, _stop

pytestmark = pytest.mark.slow

TESTS = Path(__file__).parent


def _process_env(dsn: str, receiver: Receiver, service: str) -> dict[str, str]:
    env = _env(receiver, service)
    env["DATABASE_URL"] = dsn
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    return env


@contextlib.contextmanager
def role(dsn: str, receiver: Receiver, service: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "saga_otlp_process", *args],
        env=_process_env(dsn, receiver, service),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


async def test_a_compensated_saga_across_four_processes_is_one_trace(
    dsn: str, bus: CommandBus
) -> None:
    sagas = SagaClient(bus)
    with (
        Receiver() as receiver,
        role(dsn, receiver, "workers-a", "workers", "inventory", "payments") as workers_a,
        role(dsn, receiver, "workers-b", "workers", "shipping") as workers_b,
        role(dsn, receiver, "coordinator", "coordinator") as coordinator,
    ):
        await asyncio.gather(_ready(workers_a), _ready(workers_b), _ready(coordinator))
        sender = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "saga_otlp_process", "send", "o-1", '{"Ship": "business"}'],
            env=_process_env(dsn, receiver, "sender"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sender.returncode == 0, sender.stderr
        saga_id = UUID(json.loads(sender.stdout)["saga_id"])

        async def final() -> bool:
            rec = await sagas.get_saga(saga_id)
            return rec is not None and rec.status.is_final

        await wait_for(final, timeout=30)
        rec = await sagas.get_saga(saga_id)
        assert rec is not None and rec.status is SagaStatus.COMPENSATED
        # the sender exited (and flushed); the others still hold theirs
        assert {s.service for s in receiver.spans} == {"sender"}
        await asyncio.gather(_stop(workers_a), _stop(workers_b), _stop(coordinator))
        spans = list(receiver.spans)

    corr = str(rec.correlation_id)
    mine = [s for s in spans if s.attributes.get("messaging.message.conversation_id") == corr]
    # every span that arrived (all messaging spans: sends, processing, the saga's
    # start, transitions and compensations) carries the saga's correlation id
    assert spans and mine == spans, [s for s in spans if s not in mine]
    pgmq = [s for s in mine if "messaging.system" in s.attributes]
    assert pgmq and all(s.attributes["messaging.system"] == "pgmq" for s in pgmq)

    # ONE trace for the whole saga, from all four processes
    assert len({s.trace_id for s in mine}) == 1, {s.trace_id for s in mine}
    assert {s.service for s in mine} == {"sender", "workers-a", "workers-b", "coordinator"}
    assert all(s.attributes.get("commandbus.saga_id") == str(saga_id) for s in mine)

    # parent / child links resolve inside the trace: one root, the start
    by_id = {s.span_id: s for s in mine}
    assert len(by_id) == len(mine)
    roots = [s for s in mine if s.parent_id is None or s.parent_id not in by_id]
    assert [s.name for s in roots] == ["start saga order"], roots
    assert roots[0].parent_id is None
    assert roots[0].service == "sender"

    named: dict[str, list[Received]] = {}
    for s in mine:
        named.setdefault(s.name, []).append(s)
    for name in (
        "process inventory",
        "process payments",
        "process shipping",
        "compensate charge",
        "compensate reserve",
    ):
        assert name in named, sorted(named)
    assert len(named["saga order transition"]) >= 4

    # who emitted what
    services = {name: {s.service for s in group} for name, group in named.items()}
    assert services["process inventory"] == {"workers-a"}
    assert services["process payments"] == {"workers-a"}
    assert services["process shipping"] == {"workers-b"}
    assert services["saga order transition"] == {"coordinator"}
    assert services["compensate charge"] == services["compensate reserve"] == {"coordinator"}

    # span kinds
    kinds = {name: {s.kind for s in group} for name, group in named.items()}
    assert kinds["start saga order"] == {Span.SPAN_KIND_PRODUCER}
    assert kinds["saga order transition"] == {Span.SPAN_KIND_CONSUMER}
    for domain in ("inventory", "payments", "shipping"):
        assert kinds[f"process {domain}"] == {Span.SPAN_KIND_CONSUMER}
    assert kinds["compensate charge"] == kinds["compensate reserve"] == {Span.SPAN_KIND_PRODUCER}

    # a process span is a child of the coordinator's span that sent its command
    for s in mine:
        if s.name.startswith("process "):
            parent = by_id[str(s.parent_id)]
            assert parent.service in ("coordinator", "sender"), (s, parent)
            assert parent.kind == Span.SPAN_KIND_PRODUCER, (s, parent)

    # the failing step's process span is an error (a business rule, not a crash)
    [ship] = named["process shipping"]
    assert ship.status == Status.STATUS_CODE_ERROR
    assert ship.attributes["commandbus.error.kind"] == "business"
    assert ship.attributes["commandbus.error.code"] == "REFUSED"
    assert ship.events == ["exception"]
    for domain in ("inventory", "payments"):
        assert all(s.status != Status.STATUS_CODE_ERROR for s in named[f"process {domain}"])

    # the transition that starts compensating is an error, and parents the undo
    failing = [
        s
        for s in named["saga order transition"]
        if "SagaCompensationStarted" in str(s.attributes.get("commandbus.saga_events"))
    ]
    assert len(failing) == 1, named["saga order transition"]
    assert failing[0].status == Status.STATUS_CODE_ERROR
    # which consumed the shipping reply: a child of the failed process span
    assert failing[0].parent_id == ship.span_id
    [refund] = named["compensate charge"]
    assert refund.parent_id == failing[0].span_id
    # the undo commands are processed under their compensation spans
    refunds = [
        s for s in named["process payments"] if s.attributes["commandbus.command_type"] == "Refund"
    ]
    assert [r.parent_id for r in refunds] == [refund.span_id]
    [release] = named["compensate reserve"]
    releases = [
        s
        for s in named["process inventory"]
        if s.attributes["commandbus.command_type"] == "Release"
    ]
    assert [r.parent_id for r in releases] == [release.span_id]
