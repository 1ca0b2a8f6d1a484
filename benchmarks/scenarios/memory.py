"""Scenario ``memory``: a worker's peak RSS after N/10 (smoke: N/5) and after N commands.

One worker subprocess (concurrency 16) processes N/10 pre-queued commands; its
peak RSS (``VmHWM`` of /proc/<pid>/status, read by the parent) is taken; then the
rest of N is sent while it runs and the peak is taken again. No raw baseline.
"""

from __future__ import annotations

from benchmarks.core import Context, Row, scenario, settle
from benchmarks.ops import connect, fill_library, open_bus, wait_completed
from benchmarks.procs import WorkerProcess

CONCURRENCY = 16
TARGET_GROWTH = 0.10


def _peak_kb(worker: WorkerProcess) -> int:
    mem = worker.memory_kb()
    return mem.get("VmHWM", mem.get("VmRSS", 0))


@scenario(
    "memory",
    description="peak RSS of one worker subprocess after N/10 and after N commands",
    n_meaning="commands in total (first reading after N/10, smoke N/5)",
    default_n=100_000,
    smoke_n=10_000,
)
async def memory(ctx: Context) -> list[Row]:
    first = max(1, ctx.n // (5 if ctx.smoke else 10))
    worker: WorkerProcess | None = None
    async with ctx.databases.fresh() as url, open_bus(url) as bus:
        await fill_library(bus, first)
        await settle(url)
        try:
            worker = await WorkerProcess.start(url, concurrency=CONCURRENCY)
            await worker.go()
            async with await connect(url) as conn:
                await wait_completed(conn, first, [worker], poll=0.1)
                after_first = _peak_kb(worker)
                await fill_library(bus, ctx.n - first, start=first)
                await wait_completed(conn, ctx.n, [worker], poll=0.25)
                after_all = _peak_kb(worker)
            exit_info = await worker.stop()
        finally:
            if worker is not None:
                await worker.kill()
    growth = after_all / after_first - 1
    ctx.log(
        f"memory: peak RSS {after_first / 1024:.1f} MiB after {first:,}, "
        f"{after_all / 1024:.1f} MiB after {ctx.n:,} ({growth:+.1%})"
    )
    details = {"n": ctx.n, "first": first, "maxrss_kb_at_exit": exit_info.get("maxrss_kb")}
    return [
        Row(
            "memory",
            f"peak RSS after {first:,} commands",
            "MiB",
            after_first / 1024,
            target="(info)",
            details=details,
        ),
        Row(
            "memory",
            f"peak RSS after {ctx.n:,} commands",
            "MiB",
            after_all / 1024,
            target="(info)",
            details=details,
        ),
        Row(
            "memory",
            f"growth {first:,} -> {ctx.n:,}",
            "%",
            growth * 100,
            target=f"< {TARGET_GROWTH:.0%}",
            met=growth < TARGET_GROWTH,
            details=details,
        ),
    ]
