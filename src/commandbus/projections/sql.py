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
   -- a literal, case-insensitive substring of the error's message (no wildcards)
   AND (%(error)s::text IS NULL
        OR strpos(lower(last_error->>'message'), lower(%(error)s::text)) > 0)
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

# A rebuild target: the live table's shape, marked as rebuild's own. {table} and
# {like} are identifiers; {marker} a literal. Only a marked table is ever dropped.
CREATE_REBUILD_TABLE: Final[LiteralString] = """
DROP TABLE IF EXISTS {table};
CREATE TABLE {table} (LIKE {like} INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
COMMENT ON TABLE {table} IS {marker};
"""

# Whether commandbus.<name> may be dropped and recreated by a rebuild: absent, or a
# table rebuild created (marked). A command_rebuild from before the marker existed
# qualifies by its shape (the live table's columns, in order).
REBUILD_TARGET_STATE: Final[LiteralString] = """
SELECT c.relkind = 'r' AND (
           obj_description(c.oid, 'pg_class') = %(marker)s
        OR (c.relname = 'command_rebuild'
            AND obj_description(c.oid, 'pg_class') IS NULL
            AND array(SELECT a.attname::text || ' ' || format_type(a.atttypid, a.atttypmod)
                        FROM pg_attribute a
                       WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                       ORDER BY a.attnum)
              = array(SELECT a.attname::text || ' ' || format_type(a.atttypid, a.atttypmod)
                        FROM pg_attribute a
                       WHERE a.attrelid = 'commandbus.command'::regclass
                         AND a.attnum > 0 AND NOT a.attisdropped
                       ORDER BY a.attnum)))
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'commandbus' AND c.relname = %(name)s
"""

COPY_INTO: Final[LiteralString] = "COPY {table} (" + COMMAND_COLUMNS + ") FROM STDIN"

# Replacing the live tables: lock out every writer (readers go on, seeing the old
# rows until the rebuild commits) BEFORE the replay's snapshot is taken, so that
# nothing committed after the snapshot can be deleted. Locking commandbus.command
# keeps batch writers out too: a batch row is only ever written by a statement that
# also writes its commands (send_batch), and a statement takes all its locks before
# it writes anything. Not locking commandbus.batch as well means no lock cycle with
# a caller's transaction that sent a command and then sends a batch.
LOCK_LIVE: Final[LiteralString] = "LOCK TABLE commandbus.command IN SHARE ROW EXCLUSIVE MODE"
DELETE_LIVE: Final[LiteralString] = "DELETE FROM commandbus.command"
DELETE_LIVE_BATCHES: Final[LiteralString] = "DELETE FROM commandbus.batch"

# {table} is an identifier, {columns} the batch columns, {replay} the replay query.
INSERT_BATCHES: Final[LiteralString] = "INSERT INTO {table} ({columns}, version) {replay}"

ALL_BATCHES: Final[LiteralString] = """
SELECT batch_id, name, total, correlation_id, created_at, version
  FROM commandbus.batch
 ORDER BY batch_id
"""
