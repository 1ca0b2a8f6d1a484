"""A three-step saga with compensations: reserve stock, charge the card, ship.

Run it (with no DATABASE_URL it uses the embedded PostgreSQL):

    DATABASE_URL=postgresql://... python examples/saga.py

Workers for three domains (inventory, payments, shipping) and a saga coordinator
run in this process. Order A-1 completes. Order A-2's card is declined (the
handler raises BusinessRuleError), so the saga compensates the steps that had
succeeded: the stock it reserved is released. Each saga's timeline is printed
from its own events; ``commandbus saga show SAGA_ID`` and ``commandbus trace
SAGA_ID`` show the same saga from the shell.

The handlers keep their state in the schema ``saga_example``, recreated on each run.
"""

import asyncio
from typing import Any

from commandbus import (
    BusinessRuleError,
    Command,
    CommandBus,
    Compensation,
    Coordinator,
    HandlerContext,
    HandlerRegistry,
    Saga,
    SagaClient,
    SagaRecord,
    SagaRegistry,
    Step,
    Worker,
    migrate,
)

SCHEMA = """
DROP SCHEMA IF EXISTS saga_example CASCADE;
CREATE SCHEMA saga_example;
CREATE TABLE saga_example.stock (sku text PRIMARY KEY, reserved int NOT NULL);
CREATE TABLE saga_example.charges (order_id text PRIMARY KEY, amount int NOT NULL);
CREATE TABLE saga_example.shipments (order_id text PRIMARY KEY);
INSERT INTO saga_example.stock VALUES ('lamp', 0);
"""

handlers = HandlerRegistry()


@handlers.handler("inventory", "ReserveStock")
async def reserve(cmd: Command, ctx: HandlerContext) -> dict[str, Any]:
    db = await ctx.connection()  # commits with the command's outcome
    await db.execute(
        "UPDATE saga_example.stock SET reserved = reserved + %s WHERE sku = %s",
        (cmd.data["qty"], cmd.data["sku"]),
    )
    return {"reservation": f"R-{cmd.data['order_id']}"}


@handlers.handler("inventory", "ReleaseStock")
async def release(cmd: Command, ctx: HandlerContext) -> None:
    db = await ctx.connection()
    await db.execute(
        "UPDATE saga_example.stock SET reserved = reserved - %s WHERE sku = %s",
        (cmd.data["qty"], cmd.data["sku"]),
    )


@handlers.handler("payments", "ChargeCard")
async def charge(cmd: Command, ctx: HandlerContext) -> dict[str, Any]:
    if cmd.data["amount"] > 100:
        raise BusinessRuleError(f"card declined for {cmd.data['amount']}", code="CARD_DECLINED")
    db = await ctx.connection()
    await db.execute(
        "INSERT INTO saga_example.charges VALUES (%s, %s)",
        (cmd.data["order_id"], cmd.data["amount"]),
    )
    return {"charge": f"C-{cmd.data['order_id']}"}


@handlers.handler("payments", "RefundCharge")
async def refund(cmd: Command, ctx: HandlerContext) -> None:
    db = await ctx.connection()
    await db.execute(
        "DELETE FROM saga_example.charges WHERE order_id = %s", (cmd.data["order_id"],)
    )


@handlers.handler("shipping", "ShipOrder")
async def ship(cmd: Command, ctx: HandlerContext) -> dict[str, Any]:
    db = await ctx.connection()
    await db.execute("INSERT INTO saga_example.shipments VALUES (%s)", (cmd.data["order_id"],))
    return {"tracking": f"T-{cmd.data['order_id']}"}


order = Saga(
    "order",
    version=1,
    steps=[
        Step(
            "reserve",
            domain="inventory",
            command="ReserveStock",
            data=lambda s: {k: s.input[k] for k in ("order_id", "sku", "qty")},
            compensation=Compensation(
                "ReleaseStock", data=lambda s: {"sku": s.input["sku"], "qty": s.input["qty"]}
            ),
        ),
        Step(
            "charge",
            domain="payments",
            command="ChargeCard",
            data=lambda s: {"order_id": s.input["order_id"], "amount": s.input["amount"]},
            compensation=Compensation(
                "RefundCharge", data=lambda s: {"order_id": s.input["order_id"]}
            ),
        ),
        Step(
            "ship",
            domain="shipping",
            command="ShipOrder",
            data=lambda s: {"order_id": s.input["order_id"]},
        ),
    ],
)


async def finished(sagas: SagaClient, saga_id: Any) -> SagaRecord:
    """Poll until the saga has ended (an example's shortcut; a service would not wait)."""
    while True:
        saga = await sagas.get_saga(saga_id)
        if saga is not None and saga.status.is_final:
            return saga
        await asyncio.sleep(0.05)


async def main() -> None:
    await migrate()
    async with CommandBus() as bus:
        async with bus.pool.connection() as conn:
            await conn.execute(SCHEMA)
        sagas = SagaClient(bus)
        async with (
            Worker(bus.url, handlers, domain="inventory"),
            Worker(bus.url, handlers, domain="payments"),
            Worker(bus.url, handlers, domain="shipping"),
            Coordinator(bus.url, SagaRegistry([order])),
        ):
            started = [
                await sagas.start_saga(
                    order, {"order_id": oid, "sku": "lamp", "qty": 2, "amount": n}
                )
                for oid, n in (("A-1", 40), ("A-2", 500))
            ]
            ended = [await finished(sagas, s.saga_id) for s in started]

        for saga in ended:
            events = await sagas.saga_history(saga.saga_id)
            took = (events[-1].recorded_at - events[0].recorded_at).total_seconds() * 1000
            error = f", {saga.last_error['message']}" if saga.last_error else ""
            print(f"order {saga.state.input['order_id']}: {saga.status} in {took:.0f} ms{error}")
            for event in events:
                offset = (event.recorded_at - events[0].recorded_at).total_seconds() * 1000
                step = event.data.get("step", "")
                sent = ""
                if "command_type" in event.data:  # a command sent: a step or a compensation
                    sent = f"{event.data['domain']}/{event.data['command_type']}"
                line = f"  {offset:+6.0f} ms  {event.event_type:<24} {step:<8} {sent}"
                print(line.rstrip())
            print(f"  results: {saga.results}")

        async with bus.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT (SELECT reserved FROM saga_example.stock),"
                " (SELECT string_agg(order_id, ', ') FROM saga_example.charges),"
                " (SELECT string_agg(order_id, ', ') FROM saga_example.shipments)"
            )
            reserved, charged, shipped = await cur.fetchone() or (None, None, None)
        print(f"lamps reserved: {reserved}; charged: {charged}; shipped: {shipped}")


if __name__ == "__main__":
    asyncio.run(main())
