"""One role of the multi-process saga tracing test, as its own process (tests/ on
PYTHONPATH, ``DATABASE_URL`` set, ``COMMANDBUS_OTEL=1`` and the ``OTEL_*`` variables
pointing at the test's receiver):

* ``python -m saga_otlp_process workers DOMAIN...``: a worker per domain (the
  ``saga_apps`` handlers); prints ``READY`` once they listen, SIGTERM stops them.
* ``python -m saga_otlp_process coordinator``: a coordinator for the order saga;
  ``READY`` and SIGTERM as above.
* ``python -m saga_otlp_process send ORDER_ID [STEP_BEHAVIOUR_JSON]``: starts one
  order saga through :class:`SagaClient` and prints its id as JSON.

Nothing sets tracing up here: ``Worker.run()``, ``Coordinator.run()`` and
``CommandBus.open()`` do, from the environment. Exiting flushes what was buffered.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from contextlib import AsyncExitStack

from commandbus import CommandBus, Coordinator, SagaClient, SagaRegistry, Worker
from saga_apps import ORDER, Journal, build_handlers
from support import FAST


async def serve(role: str, domains: list[str]) -> None:
    url = os.environ["DATABASE_URL"]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with AsyncExitStack() as stack:
        if role == "workers":
            handlers = build_handlers(Journal())
            for domain in domains:
                await stack.enter_async_context(
                    Worker(url, handlers, domain=domain, config=FAST, concurrency=4)
                )
        else:
            await stack.enter_async_context(Coordinator(url, SagaRegistry([ORDER]), config=FAST))
        print("READY", flush=True)
        await stop.wait()


async def send(order_id: str, behaviour: dict[str, str]) -> None:
    async with CommandBus(os.environ["DATABASE_URL"], config=FAST) as bus:
        started = await SagaClient(bus).start_saga(
            ORDER, {"order_id": order_id, "behaviour": behaviour}
        )
    print(json.dumps({"saga_id": str(started.saga_id)}), flush=True)


def main(argv: list[str]) -> None:
    role, rest = argv[0], argv[1:]
    if role == "send":
        asyncio.run(send(rest[0], json.loads(rest[1]) if len(rest) > 1 else {}))
    elif role in ("workers", "coordinator"):
        asyncio.run(serve(role, rest))
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
