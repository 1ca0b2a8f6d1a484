"""The README's performance table is a real, saved benchmark run: the newest one."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_shows_the_newest_saved_run() -> None:
    spec = importlib.util.spec_from_file_location("bench_table", ROOT / "benchmarks/table.py")
    assert spec is not None and spec.loader is not None
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    run = table.latest()
    rendered = table.render(json.loads(run.read_text()))
    readme = (ROOT / "README.md").read_text()
    assert rendered in readme, (
        f"README's table is not {run.name}'s: paste `python -m benchmarks.table`"
    )
