"""An order saga across inventory, payments and shipping, with handlers whose
behaviour a test steers through the order's input (fail here, hang there)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from typing import Any

import attrs

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
    SagaRegistry,
    Step,
    Worker,
)
from support import FAST

DOMAINS = ("inventory", "payments", "shipping", "notify")


@attrs.define
class Journal:
    """What the handlers did, in order: (domain, command type, order id)."""

    calls: list[tuple[str, str, str]] = attrs.field(factory=list)

    def of(self, order: str) -> list[str]:
        return [t for _d, t, o in self.calls if o == order]


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
            journal.calls.append((domain, ctype, str(cmd.data.get("order_id"))))
            behaviour = cmd.data.get("behaviour", {}).get(ctype)
            if behaviour == "hang":
                await asyncio.sleep(3600)
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


@asynccontextmanager
async def running(
    dsn: str, *definitions: Saga, coordinators: int = 1, config: Any = FAST
) -> AsyncIterator[Harness]:
    """Workers for every domain and ``coordinators`` coordinators, in this process."""
    journal = Journal()
    reg = build_handlers(journal)
    registry = SagaRegistry(definitions or (ORDER,))
    async with AsyncExitStack() as stack:
        bus = await stack.enter_async_context(CommandBus(dsn, config=config))
        workers = [
            await stack.enter_async_context(
                Worker(dsn, reg, domain=domain, config=config, concurrency=4)
            )
            for domain in DOMAINS
        ]
        coords = [
            await stack.enter_async_context(Coordinator(dsn, registry, config=config))
            for _ in range(coordinators)
        ]
        yield Harness(bus=bus, sagas=SagaClient(bus), coordinator=coords[0], journal=journal)
        for w in workers:
            w.request_stop(0.2)  # a hung handler is cut short


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
