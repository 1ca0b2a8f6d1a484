"""A worker process for the benchmarks: ``python -m benchmarks.worker_proc URL ...``.

Talks to its parent over stdin/stdout, one line each way:

* prints ``READY`` once imported and built, then waits for ``GO`` on stdin;
* prints ``STARTED`` and processes messages until SIGTERM / SIGINT, which ask for
  a graceful stop (``Worker.request_stop()`` for the library worker);
* prints ``EXIT processed=<n> maxrss_kb=<peak RSS>`` and exits 0.

``--mode library`` runs a commandbus :class:`~commandbus.engine.worker.worker.Worker`
with a no-op handler; ``--mode raw`` runs a plain PGMQ consumer: ``pgmq.read``
(polling every ``--poll-ms`` when the queue is empty) then ``pgmq.archive`` (or
``pgmq.delete`` with ``--delete``) of the batch. ``--timeline PATH`` stamps each
message's steps (:mod:`benchmarks.timeline`) and writes them to PATH at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from benchmarks.core import COMMAND_TYPE, DOMAIN, RAW_QUEUE
from benchmarks.timeline import Timeline, probe_library, timed


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _wait_for_go() -> bool:
    line: str = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    return line.strip() == "GO"


def _on_signals(stop: Any) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)


async def run_library(args: argparse.Namespace) -> int:
    from commandbus.config import Config
    from commandbus.engine.worker.registry import HandlerRegistry
    from commandbus.engine.worker.worker import Worker

    registry = HandlerRegistry()
    timeline = Timeline() if args.timeline else None

    @registry.handler(args.domain, COMMAND_TYPE)
    async def noop(cmd: Any, ctx: Any) -> None:
        if timeline is not None:
            timeline.stamp(cmd.command_id, "handler")
        return None

    worker = Worker(
        args.url,
        registry,
        domain=args.domain,
        concurrency=args.concurrency,
        batch_size=args.batch_size,
        config=Config(),
    )
    if timeline is not None:
        probe_library(timeline, worker)
    _on_signals(worker.request_stop)
    _say("READY")
    if not await _wait_for_go():
        return 0
    task = asyncio.create_task(worker.run(), name="bench-worker")
    _say("STARTED")
    stats = await task
    if timeline is not None:
        timeline.dump(args.timeline)
    return stats.completed


async def run_raw(args: argparse.Namespace) -> int:
    stopping = asyncio.Event()
    _on_signals(stopping.set)
    conn = await psycopg.AsyncConnection.connect(args.url, autocommit=True)
    finish = (
        "SELECT pgmq.delete(queue_name => %s::text, msg_ids => %b::bigint[])"
        if args.delete
        else "SELECT pgmq.archive(queue_name => %s::text, msg_ids => %b::bigint[])"
    )
    timeline = Timeline() if args.timeline else None

    async def read_raw() -> list[Any]:
        cur = await conn.execute(
            "SELECT msg_id, message FROM pgmq.read("
            "queue_name => %s::text, vt => %s::integer, qty => %s::integer)",
            (args.queue, 30, args.batch_size),
        )
        return await cur.fetchall()

    async def archive_raw(ids: list[int]) -> None:
        await conn.execute(finish, (args.queue, ids))

    read: Callable[..., Awaitable[Any]] = read_raw
    archive: Callable[..., Awaitable[Any]] = archive_raw
    if timeline is not None:
        read = timed(timeline, "read", read_raw, lambda _args, rows: [r[0] for r in rows])
        archive = timed(timeline, "archive", archive_raw, lambda args, _result: args[0])
    processed = 0
    async with conn:
        _say("READY")
        if not await _wait_for_go():
            return 0
        _say("STARTED")
        while not stopping.is_set():
            rows = await read()
            if not rows:
                await asyncio.sleep(args.poll_ms / 1000)
                continue
            await archive([r[0] for r in rows])
            processed += len(rows)
    if timeline is not None:
        timeline.dump(args.timeline)
    return processed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.worker_proc")
    parser.add_argument("url")
    parser.add_argument("--mode", choices=("library", "raw"), default="library")
    parser.add_argument("--domain", default=DOMAIN)
    parser.add_argument("--queue", default=RAW_QUEUE)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--poll-ms", type=float, default=1.0)
    parser.add_argument("--delete", action="store_true")
    parser.add_argument("--timeline", metavar="PATH", help="stamp each message's steps here")
    args = parser.parse_args(argv)
    runner = run_library if args.mode == "library" else run_raw
    processed = asyncio.run(runner(args))
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _say(f"EXIT processed={processed} maxrss_kb={maxrss}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
