"""Where the embedded database lives: COMMANDBUS_DATA_DIR, else the project's
``.commandbus`` found upward, else the per-user default; the same place for the
command line (from any subdirectory) and for ``migrate()``, ``CommandBus``,
``Worker`` and ``Coordinator`` given no URL; named when used and in errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from uuid import uuid4

import pytest

from commandbus.config import find_data_dir
from commandbus.engine.db.embedded import embedded_status, stop_embedded
from commandbus.errors import ConfigError
from commandbus.migrations import available_migrations

NAMES = [m.name for m in available_migrations()]
_EXE = Path(sys.executable).with_name("commandbus")
JSON_LOGS = ("--log-format", "json")


def _env(home: Path) -> dict[str, str]:
    """The environment of a new user: no DATABASE_URL, no data directory set."""
    env = dict(os.environ)
    for var in ("DATABASE_URL", "COMMANDBUS_DATA_DIR", "XDG_DATA_HOME"):
        env.pop(var, None)
    env["HOME"] = str(home)
    return env


def _cli(
    cwd: Path, home: Path, *args: str, extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The real ``commandbus`` executable, run in ``cwd`` (``extra``: more environment)."""
    command = [str(_EXE)] if _EXE.exists() else [sys.executable, "-m", "commandbus.cli"]
    return subprocess.run(
        [*command, *args],
        cwd=cwd,
        env={**_env(home), **(extra or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _python(cwd: Path, home: Path, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _one_error(proc: subprocess.CompletedProcess[str], *expected: str) -> str:
    """The one ``error:`` line on stderr (after the notice naming the data directory)."""
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    for text in expected:
        assert text in errors[0], errors[0]
    return errors[0]


# -- the rule -------------------------------------------------------------------------------


def test_the_setting_wins_and_a_relative_one_is_taken_from_the_working_directory(
    tmp_path: Path,
) -> None:
    (tmp_path / ".commandbus").mkdir()
    choice = find_data_dir(Path("db/pg"), cwd=tmp_path, environ={"HOME": str(tmp_path)})
    assert choice.path == tmp_path / "db" / "pg"
    assert "COMMANDBUS_DATA_DIR" in choice.why


def test_the_nearest_project_directory_upward_is_found(tmp_path: Path) -> None:
    home = tmp_path / "home"
    outer, inner = home / "work", home / "work" / "app"
    deep = inner / "src" / "pkg"
    deep.mkdir(parents=True)
    (outer / ".commandbus").mkdir()
    env = {"HOME": str(home)}
    assert find_data_dir(cwd=deep, environ=env).path == outer / ".commandbus" / "pgdata"
    (inner / ".commandbus").mkdir()  # a nearer one wins
    choice = find_data_dir(cwd=deep, environ=env)
    assert choice.path == inner / ".commandbus" / "pgdata"
    assert str(deep) in choice.why
    assert "current directory" in find_data_dir(cwd=inner, environ=env).why


def test_the_search_stops_at_home_and_falls_back_to_the_per_user_default(
    tmp_path: Path,
) -> None:
    (tmp_path / ".commandbus").mkdir()  # above home: not the user's project
    home = tmp_path / "home"
    cwd = home / "somewhere"
    cwd.mkdir(parents=True)
    choice = find_data_dir(cwd=cwd, environ={"HOME": str(home)})
    assert choice.path == home / ".local" / "share" / "commandbus" / "pgdata"
    assert "per-user default" in choice.why and str(cwd) in choice.why
    xdg = tmp_path / "xdg"
    env = {"HOME": str(home), "XDG_DATA_HOME": str(xdg)}
    assert find_data_dir(cwd=cwd, environ=env).path == xdg / "commandbus" / "pgdata"
    relative = {"HOME": str(home), "XDG_DATA_HOME": "rel/xdg"}  # not absolute: ignored
    assert find_data_dir(cwd=cwd, environ=relative).path == choice.path


def test_outside_home_the_search_goes_up_to_the_root(tmp_path: Path) -> None:
    (tmp_path / ".commandbus").mkdir()
    cwd = tmp_path / "srv" / "app"
    cwd.mkdir(parents=True)
    choice = find_data_dir(cwd=cwd, environ={"HOME": str(tmp_path / "elsewhere")})
    assert choice.path == tmp_path / ".commandbus" / "pgdata"


def test_no_project_and_no_home_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="COMMANDBUS_DATA_DIR") as info:
        find_data_dir(cwd=tmp_path, environ={})
    assert str(tmp_path) in str(info.value)


# -- one line for bad values ------------------------------------------------------------------


def test_nonsense_database_urls_are_one_line(tmp_path: Path) -> None:
    for args in (("migrate",), ("demo",)):
        # the line names where the URL came from: the option, or the variable
        proc = _cli(tmp_path, tmp_path, "--database-url", "nonsense", *args)
        _one_error(proc, "--database-url is not a valid PostgreSQL connection string")
        assert proc.stderr.count("\n") == 1
        proc = _cli(tmp_path, tmp_path, *args, extra={"DATABASE_URL": "nonsense"})
        line = _one_error(proc, "DATABASE_URL is not a valid PostgreSQL connection string")
        assert "--database-url" not in line
        assert proc.stderr.count("\n") == 1


def test_an_unusable_data_directory_is_one_line_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = _cli(tmp_path, tmp_path, "--data-dir", str(blocker / "pgdata"), "migrate")
    _one_error(proc, str(blocker / "pgdata"), "cannot be created", "COMMANDBUS_DATA_DIR")
    assert proc.stderr.count("\n") == 1


def test_a_removed_working_directory_is_one_line(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    command = " ".join([str(_EXE)] if _EXE.exists() else [sys.executable, "-m", "commandbus.cli"])
    proc = subprocess.run(
        ["sh", "-c", f'cd "{gone}" && rmdir "{gone}" && exec {command} db status'],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    _one_error(proc, "working directory", "COMMANDBUS_DATA_DIR")
    assert proc.stderr.count("\n") == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_read_only_project_directory_is_one_line_naming_it(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    (project / ".commandbus").mkdir(parents=True)
    (project / ".commandbus").chmod(0o500)
    try:
        proc = _cli(project, tmp_path, "migrate")
        _one_error(proc, str(project / ".commandbus" / "pgdata"), "not writable")
    finally:
        (project / ".commandbus").chmod(0o700)


# -- real servers ---------------------------------------------------------------------------


@pytest.mark.slow
def test_every_command_from_a_subdirectory_uses_the_projects_database(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    project = tmp_path / "proj"
    sub = project / "sub"
    deep = sub / "deeper"
    deep.mkdir(parents=True)
    (project / ".commandbus").mkdir()
    data_dir = project / ".commandbus" / "pgdata"
    try:
        started = _cli(deep, home, "db", "start")
        assert started.returncode == 0, started.stderr
        url = started.stdout.strip()
        assert started.stderr.splitlines() == [
            f"embedded PostgreSQL in {data_dir} (the project's .commandbus directory, "
            f"found from {deep}), running until `commandbus db stop`"
        ]

        # not migrated yet: the error says which data directory to migrate
        missing = _cli(sub, home, "show", "command", "payments", str(uuid4()))
        _one_error(
            missing,
            "not installed",
            f"of the embedded PostgreSQL in {data_dir}",
            f"run `commandbus migrate` with COMMANDBUS_DATA_DIR={data_dir}",
        )
        notice = [line for line in missing.stderr.splitlines() if not line.startswith("error")]
        assert notice == [
            f"using the running embedded PostgreSQL in {data_dir} "
            f"(the project's .commandbus directory, found from {sub})"
        ]

        migrated = _cli(sub, home, "migrate")
        assert migrated.returncode == 0, migrated.stderr
        assert migrated.stdout.splitlines() == [f"applied {name}" for name in NAMES]

        status = _cli(project, home, "db", "status")
        assert status.returncode == 0, status.stderr
        assert status.stdout.splitlines()[:2] == [
            f"data directory: {data_dir} (the project's .commandbus directory, "
            "found from the current directory)",
            f"state: running (pid {embedded_status(data_dir).pid}, until `commandbus db stop`)",
        ]
        as_json = json.loads(_cli(project, home, "db", "status", "--json").stdout)
        assert as_json["state"] == "running" and as_json["until_db_stop"] is True
        assert (as_json["pid"], as_json["url"]) == (embedded_status(data_dir).pid, url)

        # the library, given no URL, from yet another subdirectory: the same database
        lib = _python(
            deep,
            home,
            """
            import asyncio
            from commandbus import CommandBus, migrate

            async def main():
                print(await migrate())
                async with CommandBus() as bus:
                    print(bus.url)

            asyncio.run(main())
            """,
        )
        assert lib.returncode == 0, lib.stderr
        assert lib.stdout.splitlines() == ["[]", url]  # migrated above: nothing to apply
        assert embedded_status(data_dir).running  # `db start` keeps it for everyone

        stopped = _cli(sub, home, "db", "stop")
        assert stopped.stdout == f"stopped the embedded PostgreSQL in {data_dir}\n"
        assert not embedded_status(data_dir).running
        assert not (sub / ".commandbus").exists() and not (deep / ".commandbus").exists()
    finally:
        stop_embedded(data_dir)


_LIBRARY = """
import asyncio, logging, time
from commandbus import (
    CommandBus, CommandStatus, Coordinator, HandlerRegistry, SagaRegistry, Worker, migrate,
)

logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
logging.getLogger("commandbus.db").setLevel(logging.INFO)

registry = HandlerRegistry()

@registry.handler("payments", "Charge")
async def charge(cmd, ctx):
    return {"charged": cmd.data["amount"]}

async def main():
    applied = await migrate()
    async with CommandBus() as bus:
        sent = await bus.send("payments", "Charge", {"amount": 5})
        cid = sent.value.command_id
        # the worker and the coordinator find the same database: the worker completes
        # what the bus sent, the coordinator finds the schema migrate() installed
        async with Worker(None, registry, domain="payments"), \\
                   Coordinator(None, SagaRegistry([])):
            deadline = time.monotonic() + 30
            while (await bus.get_command("payments", cid)).status is not CommandStatus.COMPLETED:
                assert time.monotonic() < deadline, "the worker did not complete the command"
                await asyncio.sleep(0.02)
        print(len(applied), cid)

asyncio.run(main())
"""


@pytest.mark.slow
def test_a_new_user_without_a_project_gets_one_per_user_database(tmp_path: Path) -> None:
    (tmp_path / ".commandbus").mkdir()  # above home: never used
    home = tmp_path / "home"
    first, second = home / "one", home / "two" / "three"
    first.mkdir(parents=True)
    second.mkdir(parents=True)
    data_dir = home / ".local" / "share" / "commandbus" / "pgdata"
    try:
        lib = _python(first, home, _LIBRARY)
        assert lib.returncode == 0, lib.stderr
        applied, cid = lib.stdout.split()
        assert int(applied) == len(NAMES)
        # the library logs which data directory it started, once for the process
        assert lib.stderr.count("commandbus.db: ") == 1, lib.stderr
        assert (
            f"commandbus.db: started the embedded PostgreSQL in {data_dir} (the per-user "
            f"default: no .commandbus directory in {first} or above)"
        ) in lib.stderr.splitlines()
        # the process held it until it exited; it was the last user: stopped
        status = embedded_status(data_dir)
        assert status.initialized and not status.running
        assert not (tmp_path / ".commandbus" / "pgdata").exists()

        # from elsewhere, the command line finds the same database
        shown = _cli(second, home, "show", "command", "payments", cid, "--json")
        assert shown.returncode == 0, shown.stderr
        assert '"COMPLETED"' in shown.stdout
        assert shown.stderr.splitlines() == [
            f"started the embedded PostgreSQL in {data_dir} "
            f"(the per-user default: no .commandbus directory in {second} or above)"
        ]
        assert not embedded_status(data_dir).running  # the command stopped what it started
    finally:
        stop_embedded(data_dir)


@pytest.mark.slow
def test_a_worker_logging_json_says_which_server_in_json_once(tmp_path: Path) -> None:
    """With --log-format json every line on stderr is a JSON object, the line naming
    the embedded server included (it was printed again as plain text)."""
    home = tmp_path / "home"
    home.mkdir()
    project = tmp_path / "proj"
    (project / ".commandbus").mkdir(parents=True)
    data_dir = project / ".commandbus" / "pgdata"
    try:
        assert _cli(project, home, "db", "start").returncode == 0
        assert _cli(project, home, "migrate").returncode == 0
        command = [str(_EXE)] if _EXE.exists() else [sys.executable, "-m", "commandbus.cli"]
        env = _env(home)
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
        worker = subprocess.Popen(
            [*command, "worker", "--app", "worker_apps:registry", "--domain", "jobs", *JSON_LOGS],
            cwd=project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert worker.stderr is not None
            lines: list[str] = []
            # the command line's banner: said once the worker is ready
            while not any("serving domain 'jobs'" in line for line in lines):
                line = worker.stderr.readline()
                assert line, (worker.poll(), lines)
                lines.append(line)
            worker.send_signal(signal.SIGTERM)
            _out, rest = worker.communicate(timeout=60)
            lines += rest.splitlines(keepends=True)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.communicate(timeout=30)
        assert worker.returncode == 0, lines
        records = [json.loads(line) for line in lines if line.strip()]  # all JSON
        naming = [r for r in records if "embedded PostgreSQL in" in r["message"]]
        assert [(r["logger"], r["message"]) for r in naming] == [
            (
                "commandbus.cli",
                f"using the running embedded PostgreSQL in {data_dir} "
                f"(the project's .commandbus directory, found from the current directory)",
            )
        ]
    finally:
        stop_embedded(data_dir)


def test_commandbus_embedded_off_refuses_to_start_a_server(tmp_path: Path) -> None:
    """What production sets: a process with no database URL fails at once, in one line."""
    home = tmp_path / "home"
    home.mkdir()
    for value in ("off", "0", "OFF"):
        proc = _cli(tmp_path, home, "status", extra={"COMMANDBUS_EMBEDDED": value})
        error = _one_error(
            proc, f"COMMANDBUS_EMBEDDED={value} forbids the embedded", "DATABASE_URL"
        )
        assert proc.stderr == error + "\n"  # not even a line naming a data directory
    # not even `db start`, which exists to start it
    started = _cli(tmp_path, home, "db", "start", extra={"COMMANDBUS_EMBEDDED": "off"})
    _one_error(started, "COMMANDBUS_EMBEDDED=off forbids the embedded")
    bad = _cli(tmp_path, home, "list", extra={"COMMANDBUS_EMBEDDED": "maybe"})
    _one_error(
        bad, "COMMANDBUS_EMBEDDED must be on or off (or 1/0, true/false, yes/no), got 'maybe'"
    )
    lib = subprocess.run(
        [
            sys.executable,
            "-c",
            "import asyncio\n"
            "from commandbus import CommandBus, ConfigError\n"
            "async def main():\n"
            "    try:\n"
            "        async with CommandBus() as bus:\n"
            "            print('opened', bus.url)\n"
            "    except ConfigError as exc:\n"
            "        print('refused:', exc)\n"
            "asyncio.run(main())\n",
        ],
        cwd=tmp_path,
        env={**_env(home), "COMMANDBUS_EMBEDDED": "off"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert lib.returncode == 0, lib.stderr
    assert lib.stdout.startswith("refused: no database URL is set and COMMANDBUS_EMBEDDED=off")
    assert not (home / ".local").exists()  # nothing was created


def test_commandbus_embedded_off_changes_nothing_with_a_database_url(
    tmp_path: Path, dsn: str
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    extra = {"COMMANDBUS_EMBEDDED": "off", "DATABASE_URL": dsn}
    proc = _cli(tmp_path, home, "list", "--json", extra=extra)
    assert proc.returncode == 0, proc.stderr
    assert (proc.stdout, proc.stderr) == ("", "")  # a fresh database: no commands


def test_db_commands_say_when_a_database_url_is_set(tmp_path: Path) -> None:
    """``db`` manages the embedded server only: with a URL set it says the others use that."""
    home = tmp_path / "home"
    home.mkdir()
    extra = {"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    proc = _cli(tmp_path, home, "db", "status", extra=extra)
    assert proc.returncode == 3  # not running (as pg_ctl status says it)
    assert proc.stderr.splitlines() == [
        "note: a database URL is set (DATABASE_URL or --database-url): the other commands "
        "use that server, not this embedded one"
    ]
    assert proc.stdout.splitlines()[1] == "state: not initialised (created on first start)"
    plain = _cli(tmp_path, home, "db", "status", "--json")
    assert (plain.returncode, plain.stderr) == (3, "")
    assert json.loads(plain.stdout) == {
        "data_dir": str(home / ".local" / "share" / "commandbus" / "pgdata"),
        "why": f"the per-user default: no .commandbus directory in {tmp_path} or above",
        "state": "not initialised",
        "pid": None,
        "url": None,
        "until_db_stop": False,
    }
