"""The README's saga quick start: order A completes, B's card is declined and its
reservation is released.

Run it (with no DATABASE_URL it uses the embedded PostgreSQL, see the README):

    python examples/saga_quickstart.py

The code below is the README's saga quick start word for word
(tests/test_quickstart.py checks that, and runs the README's copy as printed).
"""

import asyncio
from datetime import timedelta
from commandbus import (
    CommandBus, HandlerRegistry, Worker, Coordinator, SagaClient, SagaRegistry,
    Saga, Step, Compensation, BusinessRuleError, migrate,
)

handlers = HandlerRegistry()

@handlers.handler("inventory", "Reserve")
async def reserve(cmd, ctx):
    return {"reservation": f"R-{cmd.data['order']}"}

@handlers.handler("inventory", "Release")
async def release(cmd, ctx):
    print("released", cmd.data["reservation"])

@handlers.handler("payments", "Charge")
async def charge(cmd, ctx):
    if cmd.data["amount"] > 100:
        raise BusinessRuleError("card declined")     # the saga compensates
    return {"charge": "C-1"}

@handlers.handler("payments", "Refund")
async def refund(cmd, ctx): ...

order = Saga("order", version=1, steps=[
    Step("reserve", domain="inventory", command="Reserve",
         data=lambda s: {"order": s.input["order"]},
         compensation=Compensation("Release",
             data=lambda s: {"reservation": s.results["reserve"]["reservation"]})),
    Step("charge", domain="payments", command="Charge",
         data=lambda s: {"amount": s.input["amount"]},
         compensation=Compensation("Refund"), timeout=timedelta(seconds=30)),
])

async def main() -> None:
    await migrate()
    async with CommandBus() as bus, \
               Worker(bus.url, handlers, domain="inventory"), \
               Worker(bus.url, handlers, domain="payments"), \
               Coordinator(bus.url, SagaRegistry([order])):
        sagas = SagaClient(bus)
        ok = await sagas.start_saga(order, {"order": "A", "amount": 40})
        declined = await sagas.start_saga(order, {"order": "B", "amount": 500})
        ended = []
        for started in (ok, declined):
            while not (saga := await sagas.get_saga(started.saga_id)).status.is_final:
                await asyncio.sleep(0.05)
            ended.append(saga)
        for saga in ended:
            print(saga.status, saga.results)

asyncio.run(main())
