"""An order saga across inventory, payments and shipping, with handlers whose
behaviour a test steers through the order's input (fail here, hang there)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from typing import Any

import attrs
from psycopg.conninfo import make_conninfo

from commandbus import (
    BusinessRuleError,
    Command,
    CommandBus,
    Compensation,
    Coordinator,
    HandlerContext,
    HandlerRegistry,
    Parallel,
    PermanentCommandError,
    Saga,
    SagaClient,
    SagaRecord,
    SagaRegistry,
    SagaStatus,
    Step,
    TransientCommandError,
    Worker,
)
from support import FAST, assert_streams_contiguous, wait_for

DOMAINS = ("inventory", "payments", "shipping", "notify")

#: Whether :func:`running`'s workers move sagas in their outcomes' transactions
#: (``Worker(..., sagas=registry)``) by default; the ``saga_path`` fixture sets it.
INLINE = False
#: The application_name of the harness's coordinator sessions.
COORDINATOR_APP = "test-saga-coordinator"


@attrs.define
class Journal:
    """What the handlers did, in order: (domain, command type, order id).

    ``gate(order)``: an event a handler steered with ``"gate"`` waits for, so a test
    holds a step in flight exactly as long as it wants.
    """

    calls: list[tuple[str, str, str]] = attrs.field(factory=list)
    gates: dict[str, asyncio.Event] = attrs.field(factory=dict)
    #: command ids that already failed once ("tsq_once")
    failed_once: set[str] = attrs.field(factory=set)

    def of(self, order: str) -> list[str]:
        return [t for _d, t, o in self.calls if o == order]

    def gate(self, order: str) -> asyncio.Event:
        return self.gates.setdefault(order, asyncio.Event())


def build_handlers(journal: Journal) -> HandlerRegistry:
    reg = HandlerRegistry()

    def steer(cmd: Command, what: str) -> None:
        behaviour = cmd.data.get("behaviour", {}).get(what)
        if behaviour == "business":
            raise BusinessRuleError(f"{what} refused", code="REFUSED")
        if behaviour == "permanent":
            raise PermanentCommandError(f"{what} broken")

    def handler(domain: str, ctype: str, result: Any = None) -> None:
        async def run(cmd: Command, ctx: HandlerContext) -> Any:
            order = str(cmd.data.get("order_id"))
            journal.calls.append((domain, ctype, order))
            behaviour = cmd.data.get("behaviour", {}).get(ctype)
            if behaviour == "hang":
                await asyncio.sleep(3600)
            if behaviour == "tsq_then_gate":
                if str(cmd.command_id) not in journal.failed_once:
                    journal.failed_once.add(str(cmd.command_id))
                    raise PermanentCommandError(f"{ctype} broken this once")
                await journal.gate(order).wait()
            if behaviour == "tsq_then_business":
                if str(cmd.command_id) not in journal.failed_once:
                    journal.failed_once.add(str(cmd.command_id))
                    raise PermanentCommandError(f"{ctype} broken this once")
                raise BusinessRuleError(f"{ctype} refused on its retry", code="REFUSED")
            if behaviour in ("gate", "gate_tsq"):
                await journal.gate(order).wait()
            if behaviour == "gate_tsq":
                raise PermanentCommandError(f"{ctype} broken after the gate")
            if behaviour == "tsq_once" and str(cmd.command_id) not in journal.failed_once:
                journal.failed_once.add(str(cmd.command_id))
                raise PermanentCommandError(f"{ctype} broken this once")
            if behaviour == "transient":
                raise TransientCommandError(f"{ctype} busy")
            if behaviour == "sleep":
                await asyncio.sleep(0.05)
            steer(cmd, ctype)
            return result(cmd) if callable(result) else result

        reg.register(domain, ctype, run)

    handler("inventory", "Reserve", lambda c: {"reservation": f"r-{c.data['order_id']}"})
    handler("inventory", "Release")
    handler("payments", "Charge", lambda c: {"charge": f"c-{c.data['order_id']}"})
    handler("payments", "Refund")
    handler("shipping", "Ship", lambda c: {"tracking": f"t-{c.data['order_id']}"})
    handler("notify", "Email")
    handler("notify", "Sms")
    return reg


def _order(ctx: Any) -> dict[str, Any]:
    return {"order_id": ctx.input["order_id"], "behaviour": ctx.input.get("behaviour", {})}


ORDER = Saga(
    "order",
    version=1,
    steps=[
        Step(
            "reserve",
            domain="inventory",
            command="Reserve",
            data=_order,
            compensation=Compensation(
                "Release",
                data=lambda ctx: {**_order(ctx), "reservation": ctx.results["reserve"]},
            ),
        ),
        Step(
            "charge",
            domain="payments",
            command="Charge",
            data=_order,
            compensation=Compensation("Refund", data=_order),
            timeout=timedelta(seconds=2),
        ),
        Step("ship", domain="shipping", command="Ship", data=_order),
    ],
)


@attrs.define
class Harness:
    bus: CommandBus
    sagas: SagaClient
    coordinator: Coordinator
    journal: Journal
    coordinators: list[Coordinator] = attrs.field(factory=list)
    workers: list[Worker] = attrs.field(factory=list)


@asynccontextmanager
async def running(
    dsn: str,
    *definitions: Saga,
    coordinators: int = 1,
    config: Any = FAST,
    journal: Journal | None = None,
    batch_size: int = 100,
    inline: bool | None = None,
) -> AsyncIterator[Harness]:
    """Workers for every domain and ``coordinators`` coordinators, in this process.

    ``coordinators=0``: workers only (replies wait in the saga queue, unless the
    workers move the sagas themselves); ``journal``: one shared with an earlier
    harness; ``inline``: the workers are given the saga registry (default
    :data:`INLINE`).
    """
    inline = INLINE if inline is None else inline
    journal = Journal() if journal is None else journal
    reg = build_handlers(journal)
    registry = SagaRegistry(definitions or (ORDER,))
    async with AsyncExitStack() as stack:
        bus = await stack.enter_async_context(CommandBus(dsn, config=config))
        workers = [
            await stack.enter_async_context(
                Worker(
                    dsn,
                    reg,
                    domain=domain,
                    config=config,
                    concurrency=4,
                    sagas=registry if inline else None,
                )
            )
            for domain in DOMAINS
        ]
        # the coordinators' sessions are named, for a test to find (and end) them
        named = make_conninfo(dsn, application_name=COORDINATOR_APP)
        coords = [
            await stack.enter_async_context(
                Coordinator(named, registry, config=config, batch_size=batch_size)
            )
            for _ in range(coordinators)
        ]
        try:
            yield Harness(
                bus=bus,
                sagas=SagaClient(bus),
                coordinator=coords[0] if coords else None,  # type: ignore[arg-type]
                journal=journal,
                coordinators=coords,
                workers=workers,
            )
        finally:
            for w in workers:
                w.request_stop(0.2)  # a hung handler is cut short
            for c in coords:
                c.request_stop(0.2)


@asynccontextmanager
async def coordinating(dsn: str, *definitions: Saga, config: Any = FAST) -> AsyncIterator[Any]:
    """A coordinator alone (beside a harness run with ``coordinators=0``)."""
    async with Coordinator(dsn, SagaRegistry(definitions), config=config) as c:
        yield c


# -- what the saga tests ask of the database ------------------------------------------------


async def final(h: Harness, saga_id: Any, timeout: float = 20.0) -> SagaRecord:  # noqa: ASYNC109
    """The saga's record once it has ended (the test fails after ``timeout``)."""
    return await status_is(h, saga_id, None, timeout=timeout)


async def status_is(
    h: Harness,
    saga_id: Any,
    status: SagaStatus | None,
    *,
    timeout: float = 20.0,  # noqa: ASYNC109
    idle: bool = False,
) -> SagaRecord:
    """The saga's record once its status is ``status`` (None: any final status).

    ``idle``: also wait until no message for it waits in the saga queue (its
    replies and requests were all decided).
    """
    found: list[SagaRecord] = []

    async def reached() -> bool:
        # the queue first: a transition committed between the two reads then shows in
        # the record (read second), never in a stale record that looks idle
        if idle and await pending_messages(h, saga_id):
            return False
        rec = await h.sagas.get_saga(saga_id)
        if rec is None:
            return False
        if not (rec.status.is_final if status is None else rec.status is status):
            return False
        found[:] = [rec]
        return True

    await wait_for(reached, timeout=timeout)
    return found[0]


async def pending_messages(h: Harness, saga_id: Any) -> int:
    """Messages for this saga in the saga queue (replies, requests; not timers)."""
    async with h.bus.pool.connection() as c:
        cur = await c.execute(
            "SELECT count(*) FROM pgmq.q_commandbus_sagas"
            " WHERE message->>'saga_id' = %s AND message->>'kind' IS DISTINCT FROM 'timer'",
            (str(saga_id),),
        )
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def history(h: Harness, saga_id: Any) -> list[tuple[str, str | None]]:
    """The saga's events as (event type, step)."""
    return [(e.event_type, e.data.get("step")) for e in await h.sagas.saga_history(saga_id)]


async def commands_of(h: Harness, saga_id: Any) -> list[tuple[str, str, str]]:
    """The commands the saga sent, in order: (domain, command type, status)."""
    async with h.bus.pool.connection() as c:
        cur = await c.execute(
            "SELECT domain, command_type, status FROM commandbus.command"
            " WHERE saga_id = %s ORDER BY created_at, command_id",
            (saga_id,),
        )
        return [tuple(r) for r in await cur.fetchall()]  # type: ignore[misc]


async def assert_consistent(h: Harness) -> None:
    """Streams contiguous; every command sent once; the saga rows equal their replay."""
    async with h.bus.pool.connection() as c:
        await assert_streams_contiguous(c)
        cur = await c.execute(
            "SELECT stream_id, count(*) FROM commandbus.event"
            " WHERE event_type = 'CommandSent' GROUP BY stream_id HAVING count(*) <> 1"
        )
        assert await cur.fetchall() == []
    report = await h.sagas.verify_projection()
    assert report.ok, [str(d) for d in report.differences]
    assert (await h.bus.verify_projection()).ok


PARALLEL = Saga(
    "fanout",
    steps=[
        Step(
            "reserve",
            domain="inventory",
            command="Reserve",
            data=_order,
            compensation=Compensation("Release", data=_order),
        ),
        Parallel(
            "tell",
            Step(
                "email",
                domain="notify",
                command="Email",
                data=_order,
                compensation=Compensation("Sms", data=_order),
            ),
            Step(
                "charge",
                domain="payments",
                command="Charge",
                data=_order,
                compensation=Compensation("Refund", data=_order),
            ),
        ),
        Step("ship", domain="shipping", command="Ship", data=_order),
    ],
)

#: The order saga without a timer: its outcome depends on the handlers alone, however
#: slow a loaded machine runs (for the races and the crash).
LINE = Saga(
    "line",
    steps=[
        Step(
            "reserve",
            domain="inventory",
            command="Reserve",
            data=_order,
            compensation=Compensation("Release", data=_order),
        ),
        Step(
            "charge",
            domain="payments",
            command="Charge",
            data=_order,
            compensation=Compensation("Refund", data=_order),
        ),
        Step("ship", domain="shipping", command="Ship", data=_order),
    ],
)


#: An app with no saga definitions (``--sagas saga_apps:NO_SAGAS`` is refused).
NO_SAGAS: list[Saga] = []
