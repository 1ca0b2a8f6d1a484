"""The README's performance table, rendered from a saved benchmark run.

``python -m benchmarks.table`` prints the table of the newest file in
``benchmarks/results/`` (or of the file given); a unit test checks that the
README shows exactly that table, so the figures there are always a real run's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def latest() -> Path:
    """The newest full run saved in ``benchmarks/results/``."""
    runs = sorted(p for p in RESULTS.glob("*.json") if not json.loads(p.read_text())["smoke"])
    if not runs:
        raise FileNotFoundError(f"no full benchmark run saved in {RESULTS}")
    return runs[-1]


def format_value(value: float | None, unit: str) -> str:
    """A figure as the tables show it (empty when there is none)."""
    if value is None:
        return ""
    if unit == "cmd/s":
        return f"{value:,.0f}/s"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "MiB":
        return f"{value:.1f} MiB"
    if unit == "%":
        return f"{value:+.1f}%"
    return f"{value:g} {unit}"


def _ratio(row: dict[str, Any]) -> str:
    if row["ratio"] is None:
        return ""
    return f"{row['ratio']:.0%}" if row["unit"] == "cmd/s" else f"{row['ratio']:.2f}x"


def render(run: dict[str, Any]) -> str:
    """The markdown table of one saved run."""
    lines = [
        "| Scenario | commandbus | raw PGMQ | ratio | target | met? |",
        "|---|---|---|---|---|---|",
    ]
    for row in run["results"]:
        target = "" if row["target"] == "(info)" else row["target"]
        met = "" if row["met"] is None else ("yes" if row["met"] else "**no**")
        lines.append(
            f"| {row['scenario']}: {row['case']} | {format_value(row['library'], row['unit'])} "
            f"| {format_value(row['raw'], row['unit'])} | {_ratio(row)} | {target} | {met} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    path = Path(argv[0]) if argv else latest()
    print(f"<!-- benchmarks/results/{path.name} -->")
    print(render(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
