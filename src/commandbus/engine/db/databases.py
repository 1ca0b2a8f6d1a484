"""A database of its own on a server, created when missing (``commandbus demo`` uses one).

The demo never writes into the database ``DATABASE_URL`` names: it makes (or
reuses) a database beside it on the same server, with the same credentials.
"""

from __future__ import annotations

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from commandbus.engine.db import sql as queries
from commandbus.engine.db.connect import connect, database_error, describe_url
from commandbus.errors import ConfigError, DatabaseError, ValidationError

#: PostgreSQL's longest identifier, in bytes (NAMEDATALEN - 1).
MAX_NAME_BYTES = 63


def check_database_name(name: str) -> str:
    """``name`` if PostgreSQL can name a database so (1 to 63 bytes, no NUL)."""
    if (
        not isinstance(name, str)
        or not name.strip()
        or "\x00" in name
        or len(name.encode()) > MAX_NAME_BYTES
    ):
        raise ValidationError(
            f"a database name must be 1 to {MAX_NAME_BYTES} bytes of text, got {name!r:.80}"
        )
    return name


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` on the same server, with the same credentials."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        raise ConfigError("DATABASE_URL is not a valid PostgreSQL connection string") from None
    params["dbname"] = check_database_name(name)
    return make_conninfo("", **params)


async def ensure_database(url: str, name: str) -> bool:
    """Create database ``name`` on the server of ``url`` unless it exists; True if created.

    Connects to ``url``'s own database to do so and changes nothing in it. A role
    that may not create databases gets a :class:`DatabaseError` saying so.
    """
    check_database_name(name)
    server = describe_url(url).rsplit("/", 1)[0]
    async with await connect(url) as conn:
        cur = await conn.execute(queries.DATABASE_EXISTS, {"name": name})
        if await cur.fetchone() is not None:
            return False
        statement = sql.SQL(queries.CREATE_DATABASE).format(database=sql.Identifier(name))
        try:
            await conn.execute(statement)
        except psycopg.errors.DuplicateDatabase:
            return False  # created by another process meanwhile
        except psycopg.Error as exc:
            raise database_error(
                exc,
                f"cannot create database {name!r} on {server}",
                other=DatabaseError,
                hint="create it, or name one that exists",
            ) from exc
    return True
