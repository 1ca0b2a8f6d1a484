"""SQL of the projections area: read-model queries, rebuild and verify."""

from __future__ import annotations

from typing import Final, LiteralString

COMMAND_COLUMNS: Final[LiteralString] = """
    domain, command_id, command_type, status, attempts, max_attempts, msg_id, last_error,
    result, correlation_id, reply_to, saga_id, batch_id, created_at, updated_at, version
"""

GET_COMMAND: Final[LiteralString] = (
    "SELECT"
    + COMMAND_COLUMNS
    + "FROM commandbus.command WHERE domain = %(domain)s AND command_id = %(command_id)s"
)

# Keyset paging over (created_at, command_id); each filter is optional.
LIST_COMMANDS: Final[LiteralString] = (
    "SELECT"
    + COMMAND_COLUMNS
    + """
  FROM commandbus.command
 WHERE (%(domain)s::text IS NULL OR domain = %(domain)s)
   AND (%(status)s::text IS NULL OR status = %(status)s)
   AND (%(correlation_id)s::uuid IS NULL OR correlation_id = %(correlation_id)s)
   AND (%(command_type)s::text IS NULL OR command_type = %(command_type)s)
   AND (%(batch_id)s::uuid IS NULL OR batch_id = %(batch_id)s)
   AND (%(error)s::text IS NULL OR last_error::text ILIKE '%%' || %(error)s || '%%')
   AND (%(after_ts)s::timestamptz IS NULL
        OR (created_at, command_id) > (%(after_ts)s::timestamptz, %(after_id)s::uuid))
 ORDER BY created_at, command_id
 LIMIT %(limit)s
"""
)

GET_BATCH: Final[LiteralString] = """
SELECT b.batch_id, b.name, b.total, b.correlation_id, b.created_at,
       coalesce((SELECT jsonb_object_agg(status, n)
                   FROM (SELECT status, count(*) AS n FROM commandbus.command
                          WHERE batch_id = b.batch_id GROUP BY status) s),
                '{}'::jsonb) AS counts
  FROM commandbus.batch b
 WHERE b.batch_id = %(batch_id)s
"""

# Every event of every command stream, stream by stream, in version order.
COMMAND_EVENTS: Final[LiteralString] = """
SELECT stream_id, stream_version, event_type, data, correlation_id, recorded_at
  FROM commandbus.event
 WHERE stream_id LIKE 'command:%%'
 ORDER BY stream_id, stream_version
"""

ALL_COMMANDS: Final[LiteralString] = (
    "SELECT" + COMMAND_COLUMNS + "FROM commandbus.command ORDER BY domain, command_id"
)

CREATE_REBUILD_TABLE: Final[LiteralString] = """
DROP TABLE IF EXISTS {table};
CREATE TABLE {table} (LIKE commandbus.command INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
"""

COPY_INTO: Final[LiteralString] = "COPY {table} (" + COMMAND_COLUMNS + ") FROM STDIN"

LOCK_LIVE: Final[LiteralString] = "LOCK TABLE commandbus.command IN ACCESS EXCLUSIVE MODE"
DELETE_LIVE: Final[LiteralString] = "DELETE FROM commandbus.command"
