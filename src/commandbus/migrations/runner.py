"""Versioned schema migrations, applied explicitly (``commandbus migrate``).

The migrations are the files ``sql/NNNN_name.sql`` of this package, applied in
order of their number, each in its own transaction together with its row in
``commandbus.schema_migrations``. A run holds a blocking, session-level advisory
lock, so processes migrating at once queue up: the first applies, the others
then find nothing to do. Before them, PGMQ is made present and usable.

Nothing here runs as a side effect of connecting; the bus only calls
:func:`ensure_schema_current`, which refuses a schema with pending migrations.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Sequence
from importlib import resources
from typing import Any, Final, LiteralString

import attrs
import psycopg
from pgmq.install import get_embedded_install_sql, get_embedded_sql_version

from commandbus.config import Config
from commandbus.engine.db.connect import (
    Conn,
    connect,
    database_error,
    describe_conn,
    migrate_hint,
)
from commandbus.engine.db.embedded import resolve_database_url
from commandbus.errors import (
    IncompatiblePGMQError,
    MigrationError,
    SchemaNotReadyError,
    ValidationError,
)

__all__ = [
    "MIGRATION_LOCK_KEY",
    "Migration",
    "applied_migrations",
    "available_migrations",
    "ensure_schema_current",
    "migrate",
    "pending_migrations",
]

logger = logging.getLogger("commandbus.migrations")

#: Key of the advisory lock a migration run holds ("cmdbus-m" as a bigint).
MIGRATION_LOCK_KEY: Final = int.from_bytes(b"cmdbus-m", "big")

_FILE_NAME = re.compile(r"^(?P<version>\d{4})_(?P<slug>[a-z0-9_]+)\.sql$")

#: What commandbus calls in PGMQ, as ``to_regprocedure`` signatures.
REQUIRED_PGMQ_FUNCTIONS: Final = (
    "pgmq.create(text)",
    "pgmq.send(text, jsonb, jsonb, integer)",
    "pgmq.send_batch(text, jsonb[], jsonb[], integer)",
    "pgmq.read(text, integer, integer, jsonb)",
)


@attrs.frozen(kw_only=True)
class Migration:
    """One versioned SQL file."""

    version: int
    #: The file name without ``.sql``, e.g. ``0001_event_store``.
    name: str
    sql: LiteralString = attrs.field(repr=False)


@functools.cache
def _packaged_migrations() -> tuple[Migration, ...]:
    found: dict[int, Migration] = {}
    for entry in resources.files("commandbus.migrations").joinpath("sql").iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _FILE_NAME.match(entry.name)
        if match is None:
            raise MigrationError(
                f"migration file {entry.name} is not named NNNN_lowercase_name.sql"
            )
        version = int(match["version"])
        if version in found:
            raise MigrationError(
                f"migrations {found[version].name} and {entry.name} share version {version}"
            )
        # Our own package data: trusted SQL, hence a literal string.
        sql: LiteralString = entry.read_text(encoding="utf-8")
        found[version] = Migration(version=version, name=entry.name[:-4], sql=sql)
    return tuple(found[v] for v in sorted(found))


def available_migrations() -> list[Migration]:
    """The packaged migrations, ordered by version (read once per process)."""
    return list(_packaged_migrations())


async def migrate(
    url: str | None = None,
    *,
    migrations: Sequence[Migration] | None = None,
    config: Config | None = None,
) -> list[str]:
    """Bring the database at ``url`` up to date; return the names of the migrations applied.

    ``url=None`` resolves the database as ``CommandBus`` does: ``DATABASE_URL`` (of
    ``config``, default ``Config.from_env()``), else the embedded server, joined
    for the rest of the process. ``migrations`` defaults to the packaged ones.
    Running it again is a no-op.
    """
    if url is not None and (not isinstance(url, str) or not url.strip()):
        raise ValidationError(f"url must be a connection string or None, got {url!r:.60}")
    if config is not None and not isinstance(config, Config):
        raise ValidationError(f"config must be a Config, got {config!r:.60}")
    if url is None:
        url = await asyncio.to_thread(resolve_database_url, None, config or Config.from_env())
    todo = (
        available_migrations()
        if migrations is None
        else sorted(migrations, key=lambda m: m.version)
    )
    applied_now: list[str] = []
    conn = await connect(url)
    try:
        await conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        pgmq_install = await _ensure_pgmq(conn)
        await _ensure_bookkeeping(conn, *pgmq_install)
        done = set(await _applied_versions(conn))
        for migration in todo:
            if migration.version in done:
                continue
            await _apply(conn, migration)
            logger.info("applied migration %s", migration.name)
            applied_now.append(migration.name)
        await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    except psycopg.Error as exc:
        raise _failure(exc, "migrating") from exc
    finally:
        await conn.close()  # also releases the advisory lock if still held
    return applied_now


async def applied_migrations(conn: Conn) -> list[str]:
    """Names of the migrations recorded in the database, in version order."""
    if not await _has_migrations_table(conn):
        return []
    cur = await conn.execute("SELECT name FROM commandbus.schema_migrations ORDER BY version")
    return [str(row[0]) for row in await cur.fetchall()]


async def pending_migrations(conn: Conn) -> list[str]:
    """Names of the packaged migrations the database has not applied yet."""
    done = set(await _applied_versions(conn)) if await _has_migrations_table(conn) else set()
    return [m.name for m in available_migrations() if m.version not in done]


async def ensure_schema_current(conn: Conn) -> None:
    """Raise :class:`SchemaNotReadyError` unless every packaged migration is applied."""
    where, hint = describe_conn(conn), migrate_hint(conn)
    if not await _has_migrations_table(conn):
        raise SchemaNotReadyError(f"the commandbus schema is not installed in {where}: {hint}")
    pending = await pending_migrations(conn)
    if pending:
        raise SchemaNotReadyError(
            f"{len(pending)} migration(s) pending in {where} ({', '.join(pending)}): {hint}"
        )


# -- steps --------------------------------------------------------------------------------


async def _apply(conn: Conn, migration: Migration) -> None:
    try:
        async with conn.transaction():
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO commandbus.schema_migrations (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
    except psycopg.Error as exc:
        raise _failure(exc, f"migration {migration.name} (rolled back)") from exc


async def _ensure_pgmq(conn: Conn) -> tuple[str, str]:
    """Install PGMQ if absent, check it is usable; return (method, version)."""
    if not await _scalar(conn, "SELECT to_regnamespace('pgmq') IS NOT NULL"):
        available = await _scalar(
            conn, "SELECT default_version FROM pg_available_extensions WHERE name = 'pgmq'"
        )
        try:
            if available is not None:
                await conn.execute("CREATE EXTENSION IF NOT EXISTS pgmq")
            else:
                sql: LiteralString = get_embedded_install_sql()  # the pinned package's SQL
                async with conn.transaction():
                    await conn.execute(sql)
        except psycopg.Error as exc:
            how = "CREATE EXTENSION pgmq" if available is not None else "the bundled PGMQ SQL"
            raise _failure(exc, f"installing PGMQ with {how}") from exc
        installed_here = True
    else:
        installed_here = False

    ext_version = await _scalar(conn, "SELECT extversion FROM pg_extension WHERE extname = 'pgmq'")
    missing = [
        f"function {sig}"
        for sig in REQUIRED_PGMQ_FUNCTIONS
        if not await _scalar(conn, "SELECT to_regprocedure(%s) IS NOT NULL", (sig,))
    ]
    if not await _scalar(conn, _HEADERS_COLUMN_SQL):
        missing.append("column headers of type pgmq.message_record")
    if missing:
        found = (
            f"PGMQ extension {ext_version}"
            if ext_version is not None
            else "a schema pgmq that is not the extension"
        )
        raise IncompatiblePGMQError(
            f"{describe_conn(conn)} has {found}, which lacks {', '.join(missing)}; "
            f"commandbus needs PGMQ with message headers (it bundles PGMQ "
            f"{get_embedded_sql_version()}): upgrade PGMQ in that database"
        )
    if ext_version is not None:
        return "extension", str(ext_version)
    return "sql", get_embedded_sql_version() if installed_here else "unknown"


_HEADERS_COLUMN_SQL: Final = """
    SELECT EXISTS (
        SELECT 1
          FROM pg_type t
          JOIN pg_attribute a ON a.attrelid = t.typrelid
         WHERE t.oid = to_regtype('pgmq.message_record')
           AND a.attname = 'headers'
           AND NOT a.attisdropped)
"""

_BOOKKEEPING_SQL: Final = """
    CREATE SCHEMA IF NOT EXISTS commandbus;
    CREATE TABLE IF NOT EXISTS commandbus.schema_migrations (
        version     integer     PRIMARY KEY,
        name        text        NOT NULL,
        applied_at  timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE IF NOT EXISTS commandbus.pgmq_install (
        singleton    boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
        method       text        NOT NULL CHECK (method IN ('extension', 'sql')),
        version      text        NOT NULL,
        recorded_at  timestamptz NOT NULL DEFAULT now()
    );
"""


async def _ensure_bookkeeping(conn: Conn, method: str, version: str) -> None:
    """Create the version tables if missing; record how PGMQ is installed."""
    await conn.execute(_BOOKKEEPING_SQL)
    # A pre-existing SQL install of unknown version keeps what an earlier run recorded.
    await conn.execute(
        """
        INSERT INTO commandbus.pgmq_install AS p (method, version) VALUES (%(m)s, %(v)s)
        ON CONFLICT (singleton) DO UPDATE
           SET method = EXCLUDED.method, version = EXCLUDED.version, recorded_at = now()
         WHERE %(v)s <> 'unknown'
           AND (p.method, p.version) IS DISTINCT FROM (EXCLUDED.method, EXCLUDED.version)
        """,
        {"m": method, "v": version},
    )


async def _has_migrations_table(conn: Conn) -> bool:
    return bool(
        await _scalar(conn, "SELECT to_regclass('commandbus.schema_migrations') IS NOT NULL")
    )


async def _applied_versions(conn: Conn) -> list[int]:
    cur = await conn.execute("SELECT version FROM commandbus.schema_migrations ORDER BY version")
    return [int(row[0]) for row in await cur.fetchall()]


async def _scalar(conn: Conn, query: LiteralString, params: tuple[Any, ...] = ()) -> Any:
    cur = await conn.execute(query, params)
    row = await cur.fetchone()
    return None if row is None else row[0]


def _failure(exc: psycopg.Error, what: str) -> Exception:
    """A driver error raised while doing ``what``: a lost connection, or a MigrationError."""
    return database_error(exc, f"{what} failed", other=MigrationError)
