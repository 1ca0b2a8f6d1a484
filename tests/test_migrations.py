"""The migration runner: ordering, idempotence, locking, PGMQ checks, schema equality."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pgmq.install import get_embedded_sql_version

from commandbus.engine.db.connect import connect
from commandbus.errors import (
    DatabaseUnavailableError,
    IncompatiblePGMQError,
    MigrationError,
    SchemaNotReadyError,
)
from commandbus.migrations import (
    MIGRATION_LOCK_KEY,
    Migration,
    applied_migrations,
    available_migrations,
    ensure_schema_current,
    migrate,
    pending_migrations,
)

Conn = psycopg.AsyncConnection[Any]

EXPECTED_TABLES = {
    "schema_migrations",
    "pgmq_install",
    "stream",
    "event",
    "command",
    "batch",
    "queue",
    "queue_wakeup",
}


async def _rows(conn: Conn, query: Any, params: Any = None) -> list[tuple[Any, ...]]:
    cur = await conn.execute(query, params)
    return await cur.fetchall()


def test_packaged_migrations_are_numbered_and_ordered() -> None:
    migrations = available_migrations()
    versions = [m.version for m in migrations]
    assert versions == sorted(set(versions))
    assert versions[:3] == [1, 2, 3]
    assert [m.name for m in migrations[:3]] == [
        "0001_event_store",
        "0002_command_projection",
        "0003_queue_wakeup",
    ]
    assert all(m.name.startswith(f"{m.version:04d}_") and m.sql.strip() for m in migrations)


async def test_migrate_applies_everything_once(empty_dsn: str) -> None:
    names = [m.name for m in available_migrations()]
    assert await migrate(empty_dsn) == names
    assert await migrate(empty_dsn) == []
    async with await connect(empty_dsn) as conn:
        assert await applied_migrations(conn) == names
        assert await pending_migrations(conn) == []
        rows = await _rows(conn, "SELECT version, name FROM commandbus.schema_migrations")
        assert sorted(rows) == [(m.version, m.name) for m in available_migrations()]
        install = await _rows(conn, "SELECT method, version FROM commandbus.pgmq_install")
        ext = await _rows(conn, "SELECT extversion FROM pg_extension WHERE extname = 'pgmq'")
        expected = ("extension", ext[0][0]) if ext else ("sql", get_embedded_sql_version())
        assert install == [expected]


async def test_an_empty_database_is_not_ready(empty_dsn: str) -> None:
    async with await connect(empty_dsn) as conn:
        assert await applied_migrations(conn) == []
        assert await pending_migrations(conn) == [m.name for m in available_migrations()]
        with pytest.raises(SchemaNotReadyError, match="run `commandbus migrate`"):
            await ensure_schema_current(conn)


async def test_a_pending_migration_is_reported(conn: Conn) -> None:
    await ensure_schema_current(conn)
    last = available_migrations()[-1]
    await conn.execute(
        "DELETE FROM commandbus.schema_migrations WHERE version = %s", (last.version,)
    )
    assert await pending_migrations(conn) == [last.name]
    with pytest.raises(SchemaNotReadyError, match=last.name) as info:
        await ensure_schema_current(conn)
    assert "commandbus migrate" in str(info.value)


async def test_pgmq_installed_by_migrate_works_with_headers(conn: Conn) -> None:
    await conn.execute("SELECT pgmq.create(%s::text)", ("cb_probe",))
    await conn.execute(
        "SELECT pgmq.send(queue_name => %s::text, msg => %s::jsonb,"
        " headers => %s::jsonb, delay => %s::integer)",
        ("cb_probe", '{"n": 1}', '{"h": "v"}', 0),
    )
    rows = await _rows(
        conn,
        "SELECT message, headers FROM pgmq.read(queue_name => %s::text, vt => %s::integer,"
        " qty => %s::integer, conditional => %s::jsonb)",
        ("cb_probe", 30, 10, "{}"),
    )
    assert rows == [({"n": 1}, {"h": "v"})]


async def test_concurrent_runs_apply_each_migration_once(empty_dsn: str) -> None:
    results = await asyncio.gather(*(migrate(empty_dsn) for _ in range(3)))
    names = [m.name for m in available_migrations()]
    assert sorted(results, key=len) == [[], [], names]


async def test_migrate_waits_for_the_lock(empty_dsn: str) -> None:
    async with await connect(empty_dsn) as holder:
        await holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        task = asyncio.create_task(migrate(empty_dsn))
        await asyncio.sleep(0.5)
        assert not task.done()
        async with await connect(empty_dsn) as probe:  # nothing written while waiting
            assert await applied_migrations(probe) == []
        await holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
        assert await asyncio.wait_for(task, 30) == [m.name for m in available_migrations()]


async def test_a_failing_migration_is_rolled_back(empty_dsn: str) -> None:
    good = available_migrations()
    bad = Migration(
        version=good[-1].version + 1,
        name=f"{good[-1].version + 1:04d}_broken",
        sql="CREATE TABLE commandbus.half_done (x int); SELECT 1/0;",
    )
    with pytest.raises(MigrationError, match="_broken") as info:
        await migrate(empty_dsn, migrations=[*good, bad])
    assert "22012" in str(info.value)  # division_by_zero
    async with await connect(empty_dsn) as conn:
        assert await applied_migrations(conn) == [m.name for m in good]
        assert await _rows(conn, "SELECT to_regclass('commandbus.half_done')") == [(None,)]
    assert await migrate(empty_dsn) == []


async def test_migrate_on_an_unreachable_server() -> None:
    with pytest.raises(DatabaseUnavailableError):
        await migrate("postgresql://postgres@127.0.0.1:1/postgres")


# -- PGMQ compatibility ---------------------------------------------------------------------


async def _assert_refused(url: str, *expected: str) -> None:
    with pytest.raises(IncompatiblePGMQError) as info:
        await migrate(url)
    message = str(info.value)
    for text in expected:
        assert text in message
    assert get_embedded_sql_version() in message  # says what is needed
    async with await connect(url) as conn:  # and nothing of ours was created
        assert await _rows(conn, "SELECT to_regnamespace('commandbus')") == [(None,)]


async def test_a_bare_pgmq_schema_is_refused(empty_dsn: str) -> None:
    async with await connect(empty_dsn) as conn:
        await conn.execute("CREATE SCHEMA pgmq; CREATE TABLE pgmq.meta (queue_name text)")
    await _assert_refused(
        empty_dsn,
        "not the extension",
        "pgmq.send(text, jsonb, jsonb, integer)",
        "pgmq.read(text, integer, integer, jsonb)",
        "headers",
    )


async def test_an_old_pgmq_without_headers_is_refused(empty_dsn: str) -> None:
    async with await connect(empty_dsn) as conn:
        await conn.execute(
            """
            CREATE SCHEMA pgmq;
            CREATE TYPE pgmq.message_record AS (
                msg_id bigint, read_ct integer, enqueued_at timestamptz,
                vt timestamptz, message jsonb);
            CREATE FUNCTION pgmq.create(queue_name text) RETURNS void
                LANGUAGE sql AS 'SELECT';
            CREATE FUNCTION pgmq.send(queue_name text, msg jsonb, delay integer DEFAULT 0)
                RETURNS SETOF bigint LANGUAGE sql AS 'SELECT 1::bigint';
            CREATE FUNCTION pgmq.send_batch(queue_name text, msgs jsonb[], delay integer)
                RETURNS SETOF bigint LANGUAGE sql AS 'SELECT 1::bigint';
            CREATE FUNCTION pgmq.read(queue_name text, vt integer, qty integer)
                RETURNS SETOF pgmq.message_record LANGUAGE sql
                AS 'SELECT NULL::pgmq.message_record WHERE false';
            """
        )
    await _assert_refused(
        empty_dsn,
        "pgmq.send(text, jsonb, jsonb, integer)",
        "pgmq.send_batch(text, jsonb[], jsonb[], integer)",
        "pgmq.read(text, integer, integer, jsonb)",
        "column headers",
    )


async def test_a_compatible_pgmq_installed_beforehand_is_kept(empty_dsn: str) -> None:
    from pgmq.install import get_embedded_install_sql

    async with await connect(empty_dsn) as conn:
        await conn.execute(get_embedded_install_sql())
        await conn.execute("SELECT pgmq.create(%s::text)", ("kept_queue",))
    assert await migrate(empty_dsn) == [m.name for m in available_migrations()]
    async with await connect(empty_dsn) as conn:
        assert await _rows(conn, "SELECT queue_name FROM pgmq.meta") == [("kept_queue",)]
        install = await _rows(conn, "SELECT method, version FROM commandbus.pgmq_install")
        assert install == [("sql", "unknown")]


# -- the schema built by the migrations -------------------------------------------------------

_SNAPSHOT_QUERIES: dict[str, str] = {
    "columns": """
        SELECT c.table_schema, c.table_name, c.column_name, c.data_type, c.is_nullable,
               coalesce(c.column_default, ''), c.is_identity
          FROM information_schema.columns c
         WHERE c.table_schema IN ('commandbus', 'pgmq')
    """,
    "relations": """
        SELECT n.nspname, c.relname, c.relkind::text, c.relpersistence::text,
               coalesce(array_to_string(c.reloptions, ','), '')
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname IN ('commandbus', 'pgmq')
    """,
    "indexes": """
        SELECT schemaname, tablename, indexname, indexdef
          FROM pg_indexes WHERE schemaname IN ('commandbus', 'pgmq')
    """,
    "constraints": """
        SELECT n.nspname, c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid)
          FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
         WHERE n.nspname IN ('commandbus', 'pgmq')
    """,
    "functions": """
        SELECT n.nspname, p.proname, pg_get_function_identity_arguments(p.oid),
               md5(pg_get_functiondef(p.oid))
          FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname IN ('commandbus', 'pgmq') AND p.prokind IN ('f', 'p')
    """,
    "triggers": """
        SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid)
          FROM pg_trigger WHERE NOT tgisinternal
    """,
    "migrations": "SELECT version, name FROM commandbus.schema_migrations",
}


async def _snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    async with await connect(url) as conn:
        return {
            key: sorted(await _rows(conn, query))  # type: ignore[arg-type]
            for key, query in _SNAPSHOT_QUERIES.items()
        }


async def test_migrating_an_empty_database_builds_the_template_schema(
    empty_dsn: str, template_url: str
) -> None:
    await migrate(empty_dsn)
    built, template = await _snapshot(empty_dsn), await _snapshot(template_url)
    for key in _SNAPSHOT_QUERIES:
        assert built[key] == template[key], key
    tables = {
        name
        for schema, name, kind, *_ in built["relations"]
        if schema == "commandbus" and kind == "r"
    }
    assert tables >= EXPECTED_TABLES
    assert ("commandbus", "commandbus.event", "event_stream_version_key") in {
        row[:3] for row in built["constraints"]
    }


# -- the schema the migrations build, against the checked-in definition ------------------------

SCHEMA_FILE = Path(__file__).parent / "expected_schema.txt"

_SCHEMA_LINES = """
SELECT 'column ' || table_name || '.' || column_name || ' ' || data_type
       || CASE WHEN is_nullable = 'NO' THEN ' not null' ELSE '' END
       || coalesce(' default ' || column_default, '')
       || CASE WHEN is_identity = 'YES' THEN ' identity' ELSE '' END
  FROM information_schema.columns WHERE table_schema = 'commandbus'
UNION ALL
SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = 'commandbus'
UNION ALL
SELECT 'constraint ' || conrelid::regclass::text || ' ' || conname || ' '
       || pg_get_constraintdef(c.oid)
  FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
 WHERE n.nspname = 'commandbus' AND c.contype <> 'n'  -- PG 18 lists NOT NULL here too
UNION ALL
SELECT 'trigger ' || pg_get_triggerdef(t.oid)
  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'commandbus' AND NOT t.tgisinternal
UNION ALL
SELECT 'function ' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')'
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'commandbus'
UNION ALL
SELECT 'table ' || c.relname || ' ' || c.relpersistence::text
       || coalesce(' ' || array_to_string(c.reloptions, ','), '')
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'commandbus' AND c.relkind = 'r'
"""


async def test_migrations_build_exactly_the_checked_in_schema(empty_dsn: str) -> None:
    """tests/expected_schema.txt is the current schema; regenerate it on purpose with
    COMMANDBUS_UPDATE_SCHEMA=1 when a new migration changes it."""
    await migrate(empty_dsn)
    async with await connect(empty_dsn) as conn:
        lines = sorted(str(r[0]) for r in await _rows(conn, _SCHEMA_LINES))
    text = "\n".join(lines) + "\n"
    if os.environ.get("COMMANDBUS_UPDATE_SCHEMA") == "1":
        SCHEMA_FILE.write_text(text)
    expected = SCHEMA_FILE.read_text()
    missing = sorted(set(expected.splitlines()) - set(lines))
    extra = sorted(set(lines) - set(expected.splitlines()))
    assert not missing and not extra, {"missing": missing, "unexpected": extra}
