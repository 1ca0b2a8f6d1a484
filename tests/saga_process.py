"""Workers for every domain and a coordinator in one process, for the crash tests:
``DATABASE_URL=... python -m saga_process`` (with tests/ on PYTHONPATH). Prints
``ready`` once everything listens; SIGTERM stops it; SIGKILL is what the tests use.

Short visibility timeouts, so what a killed process held comes back quickly.
"""

from __future__ import annotations

import asyncio
import os
import signal
from contextlib import AsyncExitStack
from datetime import timedelta

from commandbus import Coordinator, SagaRegistry, Worker
from saga_apps import DOMAINS, LINE, PARALLEL, Journal, build_handlers
from support import FAST


async def main() -> None:
    url = os.environ["DATABASE_URL"]
    handlers = build_handlers(Journal())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with AsyncExitStack() as stack:
        for domain in DOMAINS:
            await stack.enter_async_context(
                Worker(
                    url,
                    handlers,
                    domain=domain,
                    config=FAST,
                    concurrency=8,
                    visibility_timeout=timedelta(seconds=2),
                )
            )
        await stack.enter_async_context(
            Coordinator(
                url,
                SagaRegistry([LINE, PARALLEL]),
                config=FAST,
                batch_size=20,
                visibility_timeout=timedelta(seconds=1),
            )
        )
        print("ready", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
