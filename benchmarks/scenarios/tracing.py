"""Scenario ``tracing``: the end-to-end drain with OpenTelemetry off and on.

The same drain as :mod:`benchmarks.scenarios.drain` (N pre-queued no-op commands,
held invisible until the worker subprocess is connected and idle, timed on the
server clock up to the last completion), by ONE worker process (concurrency 16),
in the same run: once with ``COMMANDBUS_OTEL=0`` and once with
``COMMANDBUS_OTEL=1``, the worker then exporting with the real OTLP/HTTP exporter
(``BatchSpanProcessor`` and metrics at their default settings) to a receiver
this scenario runs on 127.0.0.1, which reads each POST, counts the spans in it
and discards it. Sampling is 100% (``OTEL_TRACES_SAMPLER=always_on``): every
command gets its process span, and the spans received are counted to show none
was dropped. The commands are sent untraced, so each process span is a root.

A third case samples 10% of the traces (``traceidratio``), as production set-ups
do; metrics are recorded for every message either way. The cases alternate
(off, on, sampled, off...; ``ROUNDS`` of each, one in a smoke run) and the best
of each is compared. Target: throughput with tracing on (100%) at most 15% below
off; the sampled case is for information. The log also prints what the
instrumentation of one delivery costs in-process (:mod:`benchmarks.tracing_cost`),
beside the time one command of the untraced drain takes: where the overhead goes.
"""

from __future__ import annotations

import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from benchmarks.core import Context, Row, ratio, scenario
from benchmarks.scenarios.drain import library_drain
from benchmarks.tracing_cost import instrumentation_cost

CONCURRENCY = 16
ROUNDS = 2
TARGET_OVERHEAD = 0.15
#: The sampled case: this share of the traces recorded (metrics are never sampled).
SAMPLED = 0.1


class DiscardingReceiver:
    """An OTLP/HTTP endpoint on 127.0.0.1 that answers 200 to every POST and keeps
    nothing but counts (requests, bytes, spans)."""

    def __init__(self) -> None:
        self.requests = 0
        self.bytes = 0
        self.spans = 0
        lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                spans = 0
                if self.path == "/v1/traces":
                    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
                        ExportTraceServiceRequest,
                    )

                    if self.headers.get("Content-Encoding") == "gzip":
                        body = gzip.decompress(body)
                    request = ExportTraceServiceRequest.FromString(body)
                    spans = sum(
                        len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans
                    )
                with lock:
                    receiver.requests += 1
                    receiver.bytes += len(body)
                    receiver.spans += spans
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-discard")

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> DiscardingReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def _env_on(endpoint: str, ratio: float | None = None) -> dict[str, str]:
    """The worker's environment with tracing on: every span, or ``ratio`` of the traces."""
    sampler = {"OTEL_TRACES_SAMPLER": "always_on"}
    if ratio is not None:
        sampler = {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": str(ratio)}
    return {
        "COMMANDBUS_OTEL": "1",
        "OTEL_SERVICE_NAME": "bench-worker",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_SDK_DISABLED": "false",
        **sampler,
    }


@scenario(
    "tracing",
    description="one worker process draining no-op commands, OpenTelemetry off vs on "
    "(OTLP/HTTP to a local receiver; 100% and 10% of traces sampled)",
    n_meaning="pre-queued commands per drain",
    default_n=10_000,
    smoke_n=300,
)
async def tracing(ctx: Context) -> list[Row]:
    rounds = 1 if ctx.smoke else ROUNDS
    off: list[float] = []
    on: list[float] = []
    sampled: list[float] = []
    spans: list[int] = []
    sampled_spans: list[int] = []
    with DiscardingReceiver() as receiver:
        env_on = _env_on(receiver.endpoint)
        env_sampled = _env_on(receiver.endpoint, SAMPLED)
        for i in range(rounds):
            async with ctx.databases.fresh() as url:
                off.append(
                    await library_drain(url, ctx.n, 1, CONCURRENCY, env={"COMMANDBUS_OTEL": "0"})
                )
            ctx.log(f"tracing off (round {i + 1}): {off[-1]:,.0f}/s")
            before = receiver.spans
            async with ctx.databases.fresh() as url:
                on.append(await library_drain(url, ctx.n, 1, CONCURRENCY, env=env_on))
            # the worker has exited, flushing what it still buffered
            spans.append(receiver.spans - before)
            ctx.log(f"tracing on (round {i + 1}): {on[-1]:,.0f}/s, {spans[-1]:,} spans received")
            before = receiver.spans
            async with ctx.databases.fresh() as url:
                sampled.append(await library_drain(url, ctx.n, 1, CONCURRENCY, env=env_sampled))
            sampled_spans.append(receiver.spans - before)
            ctx.log(
                f"tracing on, {SAMPLED:.0%} sampled (round {i + 1}): {sampled[-1]:,.0f}/s, "
                f"{sampled_spans[-1]:,} spans received"
            )
        requests, received_bytes = receiver.requests, receiver.bytes
    if any(s < ctx.n for s in spans):
        raise RuntimeError(f"the receiver got {spans} spans per traced drain, expected {ctx.n}")
    # a sampled drain records about SAMPLED of its spans (wide bounds: the smoke run is small)
    if any(not 0.02 * ctx.n <= s <= 0.3 * ctx.n for s in sampled_spans):
        raise RuntimeError(f"the receiver got {sampled_spans} spans per sampled drain of {ctx.n}")
    # where the difference goes: the instrumentation's CPU per delivery, in-process,
    # against the CPU time one command of the untraced drain takes end to end
    cost = instrumentation_cost(2_000 if ctx.smoke else 20_000, SAMPLED)
    budget = 1e6 / max(off)
    ctx.log(
        f"per-delivery instrumentation (a command takes {budget:.0f} us of the untraced drain): "
        + ", ".join(f"{k} {v:.1f} us" for k, v in cost.items())
    )
    best_off, best_on, best_sampled = max(off), max(on), max(sampled)
    share = ratio(best_on, best_off)
    sampled_share = ratio(best_sampled, best_off)
    overhead = None if share is None else 1 - share
    ctx.log(
        f"tracing: off {best_off:,.0f}/s, on {best_on:,.0f}/s, overhead "
        + ("n/a" if overhead is None else f"{overhead:.1%}")
    )
    return [
        Row(
            scenario="tracing",
            case=(
                f"drain, 1 worker process, concurrency {CONCURRENCY}: OTel on (100% sampled, "
                "OTLP/HTTP to a local receiver) vs off"
            ),
            unit="cmd/s",
            library=best_on,
            raw=best_off,
            ratio=share,
            target=f"overhead < {TARGET_OVERHEAD:.0%}",
            met=overhead is not None and overhead < TARGET_OVERHEAD,
            details={
                "n": ctx.n,
                "rounds": rounds,
                "concurrency": CONCURRENCY,
                "off_per_s": off,
                "on_per_s": on,
                "overhead": overhead,
                "sampling": "always_on (100%)",
                "spans_received": spans,
                "instrumentation_us_per_delivery": cost,
                "export_requests": requests,
                "export_bytes": received_bytes,
            },
        ),
        Row(
            scenario="tracing",
            case=(
                f"drain, 1 worker process, concurrency {CONCURRENCY}: OTel on ({SAMPLED:.0%} of "
                "traces sampled, metrics on) vs off"
            ),
            unit="cmd/s",
            library=best_sampled,
            raw=best_off,
            ratio=sampled_share,
            details={
                "n": ctx.n,
                "rounds": rounds,
                "on_per_s": sampled,
                "overhead": None if sampled_share is None else 1 - sampled_share,
                "sampling": f"traceidratio {SAMPLED}",
                "spans_received": sampled_spans,
            },
        ),
    ]
