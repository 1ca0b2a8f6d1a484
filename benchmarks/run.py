"""Command line: ``python -m benchmarks.run all|send|batch|drain|latency|memory ...``.

Runs against ``DATABASE_URL`` when set, else the embedded PostgreSQL (like the
library). Every measured case gets a fresh copy of a migrated database
``cb_bench_<random>``; all of them are dropped at the end.

Exits 0 when every scenario ran, whether or not it met its target; 1 when a
scenario failed with an error; 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks.core import SCENARIOS, Context, Databases, Row, environment
from benchmarks.table import RESULTS, format_value

COLUMNS = ("scenario", "case", "library", "raw PGMQ", "ratio", "target", "met?")


def _log(message: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- formatting ---------------------------------------------------------------------------


def _ratio(row: Row) -> str:
    if row.ratio is None:
        return "-"
    return f"{row.ratio:.0%}" if row.unit == "cmd/s" else f"{row.ratio:.2f}x"


def _met(row: Row) -> str:
    return "-" if row.met is None else ("yes" if row.met else "NO")


def table(rows: list[Row]) -> str:
    cells = [COLUMNS] + [
        (
            r.scenario,
            r.case,
            format_value(r.library, r.unit) or "-",
            format_value(r.raw, r.unit) or "-",
            _ratio(r),
            r.target,
            _met(r),
        )
        for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    right = {2, 3, 4}

    def line(c: tuple[str, ...]) -> str:
        return " | ".join(
            c[i].rjust(widths[i]) if i in right else c[i].ljust(widths[i])
            for i in range(len(COLUMNS))
        )

    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(c) for c in cells[1:])])


def header(env: dict[str, Any], *, smoke: bool) -> str:
    durable = (
        "durable settings: every commit is flushed to disk"
        if env["durable"]
        else "NOT durable settings: figures are not comparable"
    )
    return "\n".join(
        [
            f"commandbus benchmarks ({'smoke' if smoke else 'full'} run, "
            f"{dt.datetime.now().isoformat(timespec='seconds')})",
            f"PostgreSQL {env['server_version']} via {env['database']}",
            f"fsync={env['fsync']}, synchronous_commit={env['synchronous_commit']}, "
            f"full_page_writes={env['full_page_writes']} ({durable})",
            f"CPU: {env['cpu_model']}, {env['cpu_cores']} cores "
            f"(load average at start {' '.join(map(str, env['load_average']))}); "
            f"Python {env['python']}",
        ]
    )


# -- running ------------------------------------------------------------------------------


async def run(server_url: str, names: list[str], args: argparse.Namespace, embedded: bool) -> int:
    env = await environment(server_url, embedded=embedded)
    print(header(env, smoke=args.smoke), flush=True)
    databases = Databases(server_url)
    rows: list[Row] = []
    errors: dict[str, str] = {}
    timings: dict[str, float] = {}
    started = time.perf_counter()
    try:
        await databases.setup()
        for name in names:
            sc = SCENARIOS[name]
            n = args.n or (sc.smoke_n if args.smoke else sc.default_n)
            _log(f"{name}: {sc.description} (N={n:,}: {sc.n_meaning})")
            t0 = time.perf_counter()
            try:
                got = await sc.fn(Context(n=n, smoke=args.smoke, databases=databases, log=_log))
            except Exception as exc:
                errors[name] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
                print(f"\n{name}: ERROR {errors[name]}", flush=True)
                continue
            finally:
                timings[name] = time.perf_counter() - t0
            rows.extend(got)
            print(f"\n{table(got)}", flush=True)
    finally:
        await databases.teardown()
    total = time.perf_counter() - started
    if len(names) > 1 and rows:
        print(f"\nAll scenarios ({total:.0f} s):\n{table(rows)}")
    if errors:
        print("\nErrors: " + "; ".join(f"{k}: {v}" for k, v in errors.items()))
    missed = [f"{r.scenario}/{r.case}" for r in rows if r.met is False]
    print(f"\nTargets missed: {len(missed)}" + (f" ({', '.join(missed)})" if missed else ""))
    if args.json or not args.smoke:
        # a full run is kept in benchmarks/results/ (the README's table is one)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H%M%SZ")
        path = Path(args.json) if args.json else RESULTS / f"{stamp}.json"
        text = (
            json.dumps(
                {
                    "smoke": args.smoke,
                    "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "environment": env,
                    "scenarios": names,
                    "seconds": {**timings, "total": total},
                    "results": [r.as_dict() for r in rows],
                    "errors": errors,
                },
                indent=2,
            )
            + "\n"
        )
        await asyncio.to_thread(_write, path, text)
        print(f"JSON written to {path}")
    return 1 if errors else 0


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def parse(argv: list[str] | None) -> argparse.Namespace:
    import benchmarks.scenarios  # noqa: F401 - registers the scenarios

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Benchmark commandbus against raw PGMQ on DATABASE_URL "
        "(else the embedded PostgreSQL).",
    )
    parser.add_argument(
        "scenarios",
        nargs="+",
        choices=["all", *SCENARIOS],
        metavar="SCENARIO",
        help=f"all, or some of: {', '.join(SCENARIOS)}",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny N, for CI (< 60 s in all)")
    parser.add_argument(
        "--json",
        metavar="PATH",
        help="write the results as JSON here (a full run is kept in benchmarks/results/ otherwise)",
    )
    parser.add_argument(
        "-n",
        type=int,
        help="override each scenario's N: "
        + "; ".join(
            f"{s.name}: {s.n_meaning} (default {s.default_n:,})" for s in SCENARIOS.values()
        ),
    )
    args = parser.parse_args(argv)
    if args.n is not None and args.n < 1:
        parser.error("-n must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    names = list(SCENARIOS) if "all" in args.scenarios else list(dict.fromkeys(args.scenarios))
    from commandbus.config import Config
    from commandbus.engine.db.embedded import open_database

    config = Config.from_env()
    with open_database(config) as server_url:
        return asyncio.run(run(server_url, names, args, embedded=not config.database_url))


if __name__ == "__main__":
    sys.exit(main())
