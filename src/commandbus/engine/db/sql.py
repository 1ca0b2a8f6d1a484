"""SQL of the connection layer: databases of their own on a server.

Database names reach SQL only through ``psycopg.sql.Identifier`` (``{database}``).
"""

from __future__ import annotations

from typing import Final, LiteralString

DATABASE_EXISTS: Final[LiteralString] = "SELECT 1 FROM pg_database WHERE datname = %(name)s"

CREATE_DATABASE: Final[LiteralString] = "CREATE DATABASE {database}"
