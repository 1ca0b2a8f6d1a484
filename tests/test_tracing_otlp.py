"""One trace across processes, exported with the real OTLP/HTTP exporter.

The sender and two domain workers run in SEPARATE processes, each set up by
``COMMANDBUS_OTEL=1`` alone and exporting to a small OTLP/HTTP receiver this test
runs on 127.0.0.1 (decoding ``ExportTraceServiceRequest`` and
``ExportMetricsServiceRequest`` with ``opentelemetry-proto``). Every process keeps
its spans buffered (``OTEL_BSP_SCHEDULE_DELAY`` of a minute) until it exits, so
what arrives also proves that exiting flushes.

The flow: the sender sends ``orders.Place``; its handler sends
``payments.Charge`` (no ids given: they are inherited) with ``reply_to``. One
charge fails once (a retry: two process spans), the other breaks a business rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from uuid import UUID

import psycopg
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from commandbus import CommandBus, CommandStatus
from support import fetch, wait_for

Conn = psycopg.AsyncConnection[Any]

pytestmark = pytest.mark.slow


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    return None if kind is None else getattr(v, kind)


def _attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


class Received:
    """A span as it arrived: its service, ids (hex), kind, attributes, status, events."""

    def __init__(self, service: str, span: Span) -> None:
        self.service = service
        self.name = span.name
        self.trace_id = span.trace_id.hex()
        self.span_id = span.span_id.hex()
        self.parent_id = span.parent_span_id.hex() or None
        self.kind = span.kind
        self.attributes = _attributes(span.attributes)
        self.status = span.status.code
        self.events = [e.name for e in span.events]

    def __repr__(self) -> str:
        return f"<{self.service}: {self.name} {self.span_id} <- {self.parent_id}>"


class Receiver:
    """An OTLP/HTTP receiver on 127.0.0.1 that keeps what it decodes."""

    def __init__(self) -> None:
        self.spans: list[Received] = []
        self.metrics: list[tuple[str, str, dict[str, Any], int]] = []  # service, name, attrs, n
        self.requests = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path == "/v1/traces":
                    receiver._traces(ExportTraceServiceRequest.FromString(body))
                    answer = ExportTraceServiceResponse().SerializeToString()
                elif self.path == "/v1/metrics":
                    receiver._metrics(ExportMetricsServiceRequest.FromString(body))
                    answer = ExportMetricsServiceResponse().SerializeToString()
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-receiver")

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def _traces(self, request: ExportTraceServiceRequest) -> None:
        with self._lock:
            self.requests += 1
            for rs in request.resource_spans:
                service = str(_attributes(rs.resource.attributes).get("service.name"))
                for ss in rs.scope_spans:
                    self.spans.extend(Received(service, s) for s in ss.spans)

    def _metrics(self, request: ExportMetricsServiceRequest) -> None:
        with self._lock:
            for rm in request.resource_metrics:
                service = str(_attributes(rm.resource.attributes).get("service.name"))
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        if m.WhichOneof("data") == "sum":
                            for p in m.sum.data_points:
                                value = p.as_int
                                self.metrics.append(
                                    (service, m.name, _attributes(p.attributes), value)
                                )
                        elif m.WhichOneof("data") == "histogram":
                            for h in m.histogram.data_points:
                                self.metrics.append(
                                    (service, m.name, _attributes(h.attributes), h.count)
                                )

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


WORKER = """
import asyncio, signal, sys
from datetime import timedelta
from commandbus import BusinessRuleError, CommandBus, Config, HandlerRegistry, Worker

url, domain = sys.argv[1], sys.argv[2]
config = Config(backoff_base=timedelta(milliseconds=200), poll_interval=timedelta(milliseconds=200))
registry = HandlerRegistry()
bus = CommandBus(url, config=config)

@registry.handler("orders", "Place")
async def place(cmd, ctx):
    # no correlation or causation id given: the handled command's are inherited
    await bus.send("payments", "Charge", dict(cmd.data), reply_to="replies")

@registry.handler("payments", "Charge")
async def charge(cmd, ctx):
    if cmd.data.get("fail"):
        raise BusinessRuleError("card declined", code="DECLINED")
    if cmd.data.get("flaky") and ctx.attempt == 1:
        raise ConnectionResetError("payment provider hung up")
    return {"charged": True}

async def main():
    async with bus:
        worker = Worker(url, registry, domain=domain, config=config)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, worker.request_stop)
        task = asyncio.create_task(worker.run())
        await worker.ready.wait()
        print("READY", flush=True)
        await task

asyncio.run(main())
"""

SENDER = """
import asyncio, json, sys
from commandbus import CommandBus

async def main():
    async with CommandBus(sys.argv[1]) as bus:
        flows = {}
        for name, data in (("flaky", {"flaky": True}), ("fail", {"fail": True})):
            sent = (await bus.send("orders", "Place", data)).unwrap()
            flows[name] = {"command_id": str(sent.command_id),
                           "correlation_id": str(sent.correlation_id),
                           "msg_id": sent.msg_id}
    print(json.dumps(flows), flush=True)

asyncio.run(main())
"""


def _env(receiver: Receiver, service: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        COMMANDBUS_OTEL="1",
        OTEL_SERVICE_NAME=service,
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        # nothing is exported before the process exits: the exit must flush
        OTEL_BSP_SCHEDULE_DELAY="60000",
        OTEL_METRIC_EXPORT_INTERVAL="60000",
    )
    return env


@contextlib.contextmanager
def worker_process(url: str, domain: str, receiver: Receiver) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, url, domain],
        env=_env(receiver, f"worker-{domain}"),
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


async def _ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), timeout=60)
    if line.strip() != "READY":
        _out, err = proc.communicate(timeout=30)
        raise AssertionError(f"worker did not start: {line!r} {err}")


async def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    _out, err = await asyncio.to_thread(proc.communicate, timeout=60)
    assert proc.returncode == 0, err
    return err


async def test_one_trace_across_the_sender_and_two_worker_processes(
    dsn: str, bus: CommandBus, conn: Conn
) -> None:
    with (
        Receiver() as receiver,
        worker_process(dsn, "orders", receiver) as orders,
        worker_process(dsn, "payments", receiver) as payments,
    ):
        await asyncio.gather(_ready(orders), _ready(payments))
        sender = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", SENDER, dsn],
            env=_env(receiver, "sender"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sender.returncode == 0, sender.stderr
        flows = json.loads(sender.stdout)

        async def charges_final() -> bool:
            rows = await fetch(
                conn, "SELECT status FROM commandbus.command WHERE domain = 'payments'"
            )
            final = {CommandStatus.COMPLETED.value, CommandStatus.FAILED.value}
            return len(rows) == 2 and all(s in final for (s,) in rows)

        await wait_for(charges_final, timeout=60)
        # the sender has exited (and flushed); the workers still hold theirs
        assert {s.service for s in receiver.spans} == {"sender"}
        await asyncio.gather(_stop(orders), _stop(payments))
        spans, metrics = list(receiver.spans), list(receiver.metrics)

    by_id = {s.span_id: s for s in spans}
    assert len(by_id) == len(spans) == 2 * 4 + 1  # + the retried attempt
    traces: set[str] = set()
    for name, flow in flows.items():
        corr = flow["correlation_id"]
        mine = [s for s in spans if s.attributes.get("messaging.message.conversation_id") == corr]
        # one flow, one trace, across three processes
        assert len({s.trace_id for s in mine}) == 1, mine
        traces.add(mine[0].trace_id)
        named: dict[str, list[Received]] = {}
        for s in mine:
            named.setdefault(s.name, []).append(s)
        assert sorted(named) == [
            "process orders",
            "process payments",
            "send orders",
            "send payments",
        ]
        [send_orders] = named["send orders"]
        [process_orders] = named["process orders"]
        [send_payments] = named["send payments"]
        charges = sorted(
            named["process payments"], key=lambda s: s.attributes["commandbus.attempt"]
        )
        assert (send_orders.service, process_orders.service) == ("sender", "worker-orders")
        assert send_payments.service == "worker-orders"
        assert {c.service for c in charges} == {"worker-payments"}
        # parent / child links
        assert send_orders.parent_id is None
        assert process_orders.parent_id == send_orders.span_id
        assert send_payments.parent_id == process_orders.span_id
        assert all(c.parent_id == send_payments.span_id for c in charges)
        # kinds and messaging attributes
        for s in mine:
            producer = s.name.startswith("send ")
            assert s.kind == (Span.SPAN_KIND_PRODUCER if producer else Span.SPAN_KIND_CONSUMER)
            assert s.attributes["messaging.system"] == "pgmq"
            assert s.attributes["messaging.operation.type"] == ("send" if producer else "process")
            assert s.attributes["messaging.destination.name"] == s.name.split(" ", 1)[1]
        assert send_orders.attributes["commandbus.command_id"] == flow["command_id"]
        assert send_orders.attributes["messaging.message.id"] == str(flow["msg_id"])
        assert process_orders.attributes["commandbus.command_id"] == flow["command_id"]
        charge_id = send_payments.attributes["commandbus.command_id"]
        assert send_payments.attributes["commandbus.causation_id"] == flow["command_id"]
        assert all(c.attributes["commandbus.command_id"] == charge_id for c in charges)
        assert process_orders.status == Status.STATUS_CODE_UNSET

        # the reply to "replies" carries the last process span's context
        [(headers,)] = await fetch(
            conn,
            "SELECT headers FROM pgmq.q_replies WHERE message->>'command_id' = %s",
            charge_id,
        )
        _v, reply_trace, reply_parent, _f = headers["traceparent"].split("-")
        assert (reply_trace, reply_parent) == (charges[-1].trace_id, charges[-1].span_id)
        # so do the outcome events
        outcome = (await bus.command_history("payments", UUID(charge_id)))[-1]
        assert outcome.metadata["trace"]["traceparent"].split("-")[2] == charges[-1].span_id

        if name == "flaky":
            first, second = charges
            assert first.attributes["commandbus.attempt"] == 1
            assert first.attributes["commandbus.outcome"] == "retried"
            assert first.attributes["commandbus.error.kind"] == "transient"
            assert first.attributes["error.type"] == "ConnectionResetError"
            assert first.status == Status.STATUS_CODE_ERROR
            assert first.events == ["exception"]
            assert second.attributes["commandbus.attempt"] == 2
            assert second.attributes["commandbus.outcome"] == "completed"
            assert second.status == Status.STATUS_CODE_UNSET
        else:
            [failed] = charges
            assert failed.status == Status.STATUS_CODE_ERROR
            assert failed.attributes["commandbus.outcome"] == "failed"
            assert failed.attributes["commandbus.error.kind"] == "business"
            assert failed.attributes["commandbus.error.code"] == "DECLINED"
            assert failed.attributes["error.type"] == "commandbus.errors.BusinessRuleError"
            assert failed.events == ["exception"]
    assert len(traces) == 2  # two flows, two traces

    # metrics, by domain, type and outcome, from the payments worker
    processed = {
        (m[2]["commandbus.outcome"], m[3])
        for m in metrics
        if m[0] == "worker-payments" and m[1] == "commandbus.commands.processed"
    }
    assert processed == {("completed", 1), ("retried", 1), ("failed", 1)}
    durations = [m for m in metrics if m[1] == "commandbus.handler.duration"]
    assert sum(m[3] for m in durations if m[0] == "worker-payments") == 3
    sent = [m for m in metrics if m[1] == "commandbus.commands.sent" and m[0] == "sender"]
    assert [(m[2]["commandbus.domain"], m[3]) for m in sent] == [("orders", 2)]


def test_the_receiver_decodes_what_it_is_sent() -> None:
    """The receiver itself: a hand-made request in, the same span out."""
    import urllib.request

    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value="x")))
    span = rs.scope_spans.add().spans.add()
    span.name, span.trace_id, span.span_id = "s", b"\x01" * 16, b"\x02" * 8
    with Receiver() as receiver:
        post = urllib.request.Request(
            receiver.endpoint + "/v1/traces",
            data=request.SerializeToString(),
            headers={"Content-Type": "application/x-protobuf"},
        )
        with urllib.request.urlopen(post, timeout=10) as answer:
            assert answer.status == 200
    [got] = receiver.spans
    assert (got.service, got.name, got.trace_id) == ("x", "s", "01" * 16)
