"""``commandbus demo`` with ``COMMANDBUS_OTEL=1`` exports its sagas as traces.

The real executable runs the order-saga tour with the real OTLP/HTTP exporter
pointed (``OTEL_EXPORTER_OTLP_ENDPOINT``) at the receiver of ``test_tracing_otlp``,
which decodes every ``ExportTraceServiceRequest``. Each of the four orders must
arrive as ONE trace rooted in its start, carrying its correlation id, with the
failures and compensations where the demo's printout says they happened; the
order whose charge times out included (its timer joins the saga's trace).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator

import psycopg
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from psycopg import sql

from support import run_cli
from test_tracing_otlp import Received, Receiver, _env

pytestmark = pytest.mark.slow

UUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


@pytest.fixture
def demo_database(server_url: str) -> Iterator[str]:
    name = f"cbtest_demo_otel_{secrets.token_hex(4)}"
    try:
        yield name
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _sagas(out: str) -> dict[str, tuple[str, str, str]]:
    """order id -> (saga id, final status, correlation id), from the printed timelines."""
    found: dict[str, tuple[str, str, str]] = {}
    for block in re.split(r"\n(?=order A-\d+: )", out):
        order = re.match(r"order (A-\d+): ", block)
        saga = re.search(rf"^saga ({UUID_RE})  order v1  (\w+)$", block, re.M)
        corr = re.search(rf"^  correlation  ({UUID_RE})$", block, re.M)
        if order and saga and corr:
            found[order.group(1)] = (saga.group(1), saga.group(2), corr.group(1))
    return found


def test_the_demo_exports_each_saga_as_one_trace(server_url: str, demo_database: str) -> None:
    with Receiver() as receiver:
        env: dict[str, str | None] = dict(_env(receiver, "demo"))
        env["DATABASE_URL"] = server_url
        proc = run_cli("demo", "--database", demo_database, env=env)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, (out, err)
        spans = list(receiver.spans)

    sagas = _sagas(out)
    assert {k: v[1] for k, v in sagas.items()} == {
        "A-1001": "COMPLETED",
        "A-1002": "COMPENSATED",
        "A-1003": "COMPENSATED",
        "A-1004": "COMPLETED",
    }, out
    assert spans and {s.service for s in spans} == {"demo"}

    def of(order: str) -> list[Received]:
        saga_id = sagas[order][0]
        return [s for s in spans if s.attributes.get("commandbus.saga_id") == saga_id]

    def named(mine: list[Received], name: str) -> list[Received]:
        return [s for s in mine if s.name == name]

    for order, (_saga_id, _status, corr) in sagas.items():
        mine = of(order)
        # ONE trace per saga, every span of it on the saga's correlation id
        assert len({s.trace_id for s in mine}) == 1, (order, mine)
        assert all(s.attributes["messaging.message.conversation_id"] == corr for s in mine)
        trace = [s for s in spans if s.trace_id == mine[0].trace_id]
        assert trace == mine, (order, [s for s in trace if s not in mine])
        # rooted in its start; every other span's parent is in the trace
        by_id = {s.span_id: s for s in mine}
        roots = [s for s in mine if s.parent_id not in by_id]
        assert [(r.name, r.parent_id) for r in roots] == [("start saga order", None)], order
        assert roots[0].kind == Span.SPAN_KIND_PRODUCER
        for domain in ("inventory", "shipping"):
            assert named(mine, f"process {domain}"), (order, domain)
        assert named(mine, "saga order transition"), order

    def errors(mine: list[Received], name: str) -> list[Received]:
        return [s for s in named(mine, name) if s.status == Status.STATUS_CODE_ERROR]

    # A-1001: the busy warehouse's first attempt is an error span, the retry is not
    inventory = named(of("A-1001"), "process inventory")
    assert sorted(s.attributes["commandbus.attempt"] for s in inventory) == [1, 2]
    failed = errors(of("A-1001"), "process inventory")
    assert [s.attributes["commandbus.attempt"] for s in failed] == [1]
    assert not named(of("A-1001"), "compensate reserve")

    # A-1002: the declined card is a business-rule failure, then both undo steps
    declined = of("A-1002")
    [charge] = errors(declined, "process payments")
    assert charge.attributes["commandbus.error.kind"] == "business"
    assert charge.attributes["commandbus.error.code"] == "CARD_DECLINED"
    for step in ("schedule", "reserve"):
        assert len(named(declined, f"compensate {step}")) == 1, step

    # A-1003: the charge never answers; its timer fires inside the saga's trace,
    # as a child of the charge's send, and starts the compensation
    timed_out = of("A-1003")
    by_id = {s.span_id: s for s in timed_out}
    [send_charge] = named(timed_out, "send charge")
    fired = [
        s
        for s in named(timed_out, "saga order transition")
        if "SagaStepTimedOut" in str(s.attributes.get("commandbus.saga_events"))
    ]
    assert len(fired) == 1, named(timed_out, "saga order transition")
    assert fired[0].parent_id == send_charge.span_id
    assert fired[0].status == Status.STATUS_CODE_ERROR
    [undo] = named(timed_out, "compensate schedule")
    assert by_id[str(undo.parent_id)] is fired[0]
    assert len(named(timed_out, "compensate reserve")) == 1

    # A-1004: the shipment went to the troubleshooting queue, then the operator's
    # retry completed it: two process spans of Ship, the first an error
    ships = [
        s
        for s in named(of("A-1004"), "process shipping")
        if s.attributes["commandbus.command_type"] == "Ship"
    ]
    assert [s.status == Status.STATUS_CODE_ERROR for s in ships] == [True, False], ships
