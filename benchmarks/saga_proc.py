"""A saga process for the benchmarks: ``python -m benchmarks.saga_proc URL ...``.

One process runs a commandbus :class:`~commandbus.engine.worker.worker.Worker` for
each of the three domains of :data:`SAGA` (no-op handlers, also for the plain
benchmark command in the first domain) and a
:class:`~commandbus.sagas.coordinator.Coordinator` over that 3-step saga: the
setup a saga needs, used both for the sagas and for the plain-command baseline
it is compared with.

Talks to its parent like :mod:`benchmarks.worker_proc`, one line each way:

* prints ``READY`` once imported and built, then waits for ``GO`` on stdin;
* starts the workers and the coordinator, prints ``STARTED`` once every one of
  them is connected and listening, and runs until SIGTERM / SIGINT, which ask
  each for a graceful stop;
* prints ``EXIT processed=<commands completed> sagas=<sagas completed>
  transitions=<n> messages=<saga-queue messages> conflicts=<n> groups=<n>
  max_group=<n> worker_groups=<n> maxrss_kb=<peak RSS>`` and exits 0.
  ``groups`` is how many groups the coordinator recorded (one transaction each),
  ``worker_groups`` the same for the three workers together.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import signal
import sys
from collections.abc import Callable
from typing import Any

#: (step name, domain, command type, compensation command or None)
STEPS = (
    ("reserve", "bench_inventory", "Reserve", "Release"),
    ("charge", "bench_payments", "Charge", "Refund"),
    ("ship", "bench_shipping", "Ship", None),
)
SAGA_NAME = "bench_order"
DOMAINS = tuple(d for _s, d, _c, _k in STEPS)
#: the plain command of the baseline, in the first domain
PLAIN_DOMAIN = DOMAINS[0]
PLAIN_COMMAND = "Noop"


def build_saga() -> Any:
    """The benchmark saga: reserve -> charge -> ship, each step in its own domain.

    Each step's data is built from the input and the results so far (as a real
    process would), and the first two name a compensation (never run here).
    """
    from commandbus.sagas import Compensation, Saga, SagaContext, Step

    def data_for(step: str) -> Callable[[SagaContext], dict[str, Any]]:
        def build(ctx: SagaContext) -> dict[str, Any]:
            return {"order": ctx.input.get("i"), "step": step, "done": sorted(ctx.results)}

        return build

    return Saga(
        SAGA_NAME,
        steps=[
            Step(
                name,
                domain=domain,
                command=command,
                data=data_for(name),
                compensation=None if undo is None else Compensation(undo),
            )
            for name, domain, command, undo in STEPS
        ],
    )


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _wait_for_go() -> bool:
    line: str = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    return line.strip() == "GO"


class _Groups:
    """Counts the groups a consumer app records (one transaction each)."""

    def __init__(self, app: Any) -> None:
        self.count = 0
        self.items = 0
        self.largest = 0
        inner = app.record

        async def record(flusher: Any, group: list[Any]) -> None:
            self.count += 1
            self.items += len(group)
            self.largest = max(self.largest, len(group))
            await inner(flusher, group)

        app.record = record  # the consumer calls it through the app


async def run(args: argparse.Namespace) -> dict[str, int]:
    from commandbus.config import Config
    from commandbus.engine.worker.registry import HandlerRegistry
    from commandbus.engine.worker.worker import Worker
    from commandbus.sagas import Coordinator, SagaRegistry

    handlers = HandlerRegistry()

    async def noop(cmd: Any, ctx: Any) -> None:
        return None

    for _step, domain, command, undo in STEPS:
        handlers.register(domain, command, noop)
        if undo is not None:
            handlers.register(domain, undo, noop)
    handlers.register(PLAIN_DOMAIN, PLAIN_COMMAND, noop)

    config = Config()
    sagas = SagaRegistry([build_saga()])
    workers = [
        Worker(
            args.url,
            handlers,
            domain=domain,
            concurrency=args.concurrency,
            batch_size=args.batch_size,
            config=config,
            sagas=sagas,  # a step's outcome moves its saga in the same transaction
        )
        for domain in DOMAINS
    ]
    coordinator = Coordinator(args.url, sagas, batch_size=args.batch_size, config=config)
    groups = _Groups(coordinator)
    # a worker records through the consumer app of each of its domains
    worker_groups = [_Groups(d) for w in workers for d in w._domains]
    parts: list[Any] = [*workers, coordinator]

    def stop() -> None:
        for p in parts:
            p.request_stop()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    _say("READY")
    if not await _wait_for_go():
        return {}
    tasks = [asyncio.create_task(p.run(), name=f"bench-{i}") for i, p in enumerate(parts)]
    ready = asyncio.gather(*(p.ready.wait() for p in parts))
    done, _ = await asyncio.wait({ready, *tasks}, return_when=asyncio.FIRST_COMPLETED)
    if ready not in done:  # a part ended before it was ready: its error says why
        stop()
        ready.cancel()
        await asyncio.gather(*tasks)
        raise RuntimeError("a worker or the coordinator stopped before it was ready")
    _say("STARTED")
    results = await asyncio.gather(*tasks)
    saga_stats = results[-1]
    # what the workers did to sagas in their outcomes' transactions
    # (workers given the same registry and config share one)
    shared = {id(w._domains[0]._settings.inline): w._domains[0]._settings.inline for w in workers}
    inline = [i.stats for i in shared.values()]  # type: ignore[union-attr]
    return {
        "processed": sum(s.completed for s in results[:-1]),
        "sagas": saga_stats.completed + sum(s.completed for s in inline),
        "transitions": saga_stats.transitions,
        "inline_transitions": sum(s.transitions for s in inline),
        "messages": saga_stats.messages,
        "conflicts": saga_stats.conflicts,
        "groups": groups.count,
        "max_group": groups.largest,
        "worker_groups": sum(g.count for g in worker_groups),
        "inline": sum(s.inline_replies for s in results[:-1]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.saga_proc")
    parser.add_argument("url")
    parser.add_argument("--concurrency", type=int, default=16, help="per worker")
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args(argv)
    figures = asyncio.run(run(args))
    figures["maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _say("EXIT " + " ".join(f"{k}={v}" for k, v in figures.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
