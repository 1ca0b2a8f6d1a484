"""SQL of the commands, in one place (the listings' keyset statements: list_sql.py).

Values always travel as parameters. Queue tables are named only through
``psycopg.sql.Identifier`` (``{queue}``, ``{archive}``) after the queue name was
validated by :mod:`commandbus.names`. Event and stream type names are parameters
named after their constants in :mod:`commandbus.event_types` (``%(command_sent)s``
is ``COMMAND_SENT``), never literals here.

The statements are written for the hot path: each does its whole job in ONE
round trip with data-modifying CTEs over ``unnest`` arrays, so sending a batch,
reading a batch or recording a group of outcomes costs a constant number of
statements whatever the number of commands.
"""

from __future__ import annotations

from typing import Final, LiteralString

from commandbus.engine.eventstore.sql import INSERT_PASSED_EVENTS

# -- sending -------------------------------------------------------------------------------
#
# A command's stream has no row in commandbus.stream: its status row is its version
# (commandbus.command.version), and the event table's unique (stream_id,
# stream_version) guards its events. (Commands sent by earlier releases do have a
# stream row; nothing reads or bumps it any more.) The status row is inserted
# first, ON CONFLICT DO NOTHING: its primary key is what refuses a duplicate
# command id, and it waits for a concurrent sender of the same id to commit or roll
# back. So the queue message's id is drawn up front from the queue's own sequence
# ({msg_id}: tables.next_msg_id) and the message inserted with it.

# One command: status row, queue message and CommandSent event in one statement. A
# duplicate (domain, command id) writes nothing at all and returns no row.
SEND_ONE: Final[LiteralString] = """
WITH proj AS (
    INSERT INTO commandbus.command
           (domain, command_id, command_type, status, attempts, max_attempts, msg_id,
            correlation_id, reply_to, saga_id, batch_id, created_at, updated_at, version)
    VALUES (%(domain)s, %(command_id)s, %(command_type)s, 'PENDING', 0, %(max_attempts)s,
            {msg_id}, %(correlation_id)s, %(reply_to)s, %(saga_id)s, NULL, now(), now(), 1)
    ON CONFLICT (domain, command_id) DO NOTHING
    RETURNING msg_id
), msg AS (
    INSERT INTO pgmq.{queue} (msg_id, vt, message, headers) OVERRIDING SYSTEM VALUE
    SELECT proj.msg_id, clock_timestamp() + %(delay)s::float8 * interval '1 second',
           %(message)s::jsonb, %(headers)s::jsonb
      FROM proj
), evt AS (
    INSERT INTO commandbus.event
           (stream_id, stream_version, event_type, data, correlation_id, causation_id, metadata)
    SELECT %(stream_id)s, 1, %(command_sent)s,
           %(message)s::jsonb || jsonb_build_object('domain', %(domain)s::text,
               'delay_seconds', %(delay)s::float8, 'msg_id', proj.msg_id),
           %(correlation_id)s, %(causation_id)s, %(metadata)s::jsonb
      FROM proj
)
SELECT msg_id FROM proj
"""

# Many commands (one or more domains) in one statement: SEND_BATCH_HEAD, one
# SEND_BATCH_QUEUE per domain, SEND_BATCH_TAIL. {msg_id} draws each command's
# message id from its domain's queue; {batch_id} is %(batch_id)s for the commands
# of a batch (send_batch sends a batch's commands in parts, then CREATE_BATCH, all
# in one transaction), NULL otherwise. Nothing but status rows is inserted unless
# every command id was new; the caller then rolls back the status rows inserted
# and reports the duplicates that come back.
SEND_BATCH_HEAD: Final[LiteralString] = """
WITH input AS (
    SELECT *
      FROM unnest(%(stream_ids)b::text[], %(domains)b::text[], %(command_ids)b::uuid[],
                  %(types)b::text[], %(messages)b::jsonb[],
                  %(headers)b::jsonb[], %(corr)b::uuid[], %(caus)b::uuid[],
                  %(max_attempts)b::int[], %(reply_to)b::text[], %(saga_ids)b::uuid[],
                  %(delays)b::float8[], %(metadata)b::jsonb[])
           AS i(stream_id, domain, command_id, command_type, message, headers,
                correlation_id, causation_id, max_attempts, reply_to, saga_id, delay,
                metadata)
), proj AS (
    INSERT INTO commandbus.command
           (domain, command_id, command_type, status, attempts, max_attempts, msg_id,
            correlation_id, reply_to, saga_id, batch_id, created_at, updated_at, version)
    SELECT domain, command_id, command_type, 'PENDING', 0, max_attempts, {msg_id},
           correlation_id, reply_to, saga_id, {batch_id}, now(), now(), 1
      FROM input
    ON CONFLICT (domain, command_id) DO NOTHING
    RETURNING domain, command_id, msg_id
), go AS (
    SELECT input.*, proj.msg_id
      FROM input JOIN proj USING (domain, command_id)
     WHERE (SELECT count(*) FROM proj) = %(expected_commands)s
)"""

# One per domain in the batch: {queue} and {cte} are identifiers. {seconds} is the
# command's delay, {read_ct} 0, {last_read_at} NULL, unless the domain's messages
# are claimed as they are sent (engine/worker/handoff.py): then they are read once
# already (1, now), invisible for {seconds}, the visibility timeout of the consumer
# they go to, and wake no reader: {no_wakeup} sets, before the first row goes in,
# the setting by which the queue's wake-up trigger (migration 0004) knows that its
# transaction queued a wake-up already.
SEND_BATCH_QUEUE: Final[LiteralString] = """, {cte} AS (
    INSERT INTO pgmq.{queue} (msg_id, vt, read_ct, last_read_at, message, headers)
    OVERRIDING SYSTEM VALUE
    SELECT go.msg_id, clock_timestamp() + {seconds} * interval '1 second', {read_ct},
           {last_read_at}, go.message, go.headers
      FROM go WHERE go.domain = {domain}{no_wakeup}
)"""

SEND_BATCH_TAIL: Final[LiteralString] = """, evt AS (
    INSERT INTO commandbus.event
           (stream_id, stream_version, event_type, data, correlation_id, causation_id, metadata)
    SELECT stream_id, 1, %(command_sent)s::text,
           message || jsonb_build_object('domain', domain, 'delay_seconds', delay,
                                         'msg_id', msg_id),
           correlation_id, causation_id, metadata
      FROM go
)"""

# The result of SEND_BATCH: each command, its message id if sent and whether it is new.
SEND_BATCH_RESULT: Final[LiteralString] = """
SELECT input.domain, input.command_id, go.msg_id,
       (input.domain, input.command_id) IN (SELECT domain, command_id FROM proj) AS is_new
  FROM input LEFT JOIN go USING (domain, command_id)
"""

# SEND_BATCH's result when every command must be sent (else all_applied raises): one
# row whatever happened, with the command ids and message ids sent.
SEND_BATCH_ALL_APPLIED: Final[LiteralString] = """
SELECT commandbus.all_applied(count(*), %(expected_commands)s, 'commands sent'),
       coalesce(array_agg(go.command_id), '{}'), coalesce(array_agg(go.msg_id), '{}')
  FROM go
"""

# A batch: its stream (a batch stream keeps its row), its BatchCreated event and
# its row, after its commands (SEND_BATCH parts) in the same transaction. Returns
# one row: whether the batch is new (if not, nothing is written and the caller
# rolls back). {batch_columns} and {batch_row} are the one definition of a batch
# row (batch_status.py), which the replay uses too.
CREATE_BATCH: Final[LiteralString] = """
WITH created AS (
    INSERT INTO commandbus.stream (stream_id, stream_type, version)
    VALUES (%(batch_stream_id)s, %(batch_stream)s::text, 1)
    ON CONFLICT (stream_id) DO NOTHING
    RETURNING stream_id
), evt AS (
    INSERT INTO commandbus.event
           (stream_id, stream_version, event_type, data, correlation_id, causation_id, metadata)
    SELECT stream_id, 1, %(batch_created)s::text, %(batch_data)s::jsonb, %(batch_corr)s, NULL,
           jsonb_build_object()
      FROM created
    RETURNING stream_version, data, correlation_id, recorded_at
), batch AS (
    INSERT INTO commandbus.batch ({batch_columns}, version)
    SELECT {batch_row}, e.stream_version
      FROM evt e
)
SELECT EXISTS (SELECT 1 FROM created)
"""

# -- worker: read and record outcomes -------------------------------------------------------

# Take up to %(qty)s visible messages, make them invisible for %(vt)s seconds, and
# return them with the state of their command (for the expected version of the
# outcome append). Ordering by vt uses PGMQ's vt index and skips in-flight messages
# instead of rescanning them. The state comes from the status row; if that row is
# missing (dropped by hand, say), from the command's own events: the version of its
# last event, and the status and attempts of its last event that set them
# ({status_of_event} and {attempts_of_event}, generated from the one projection
# definition); its stream id is %(stream_prefix)s (the domain's command stream ids
# up to the command id) followed by the command id. Only a message with no command
# events at all reads as foreign (NULL version).
READ_BATCH: Final[LiteralString] = """
WITH picked AS (
    SELECT msg_id FROM pgmq.{queue}
     WHERE vt <= clock_timestamp()
     ORDER BY vt
     LIMIT %(qty)s
       FOR UPDATE SKIP LOCKED
), taken AS (
    UPDATE pgmq.{queue} m
       SET vt = clock_timestamp() + %(vt)s * interval '1 second',
           read_ct = m.read_ct + 1,
           last_read_at = clock_timestamp()
      FROM picked
     WHERE m.msg_id = picked.msg_id
    RETURNING m.msg_id, m.read_ct, m.message, m.headers,
              CASE WHEN m.message->>'command_id'
                        ~* '^[0-9a-f]{{8}}-([0-9a-f]{{4}}-){{3}}[0-9a-f]{{12}}$'
                   THEN (m.message->>'command_id')::uuid
              END AS command_id
)
SELECT t.msg_id, t.read_ct, t.message, nullif(t.headers, '{{}}'::jsonb),
       coalesce(c.version, f.version), coalesce(c.attempts, f.attempts),
       coalesce(c.status, f.status)
  FROM taken t
  -- LATERAL: one primary-key probe per message, whatever the statistics say
  LEFT JOIN LATERAL (
        SELECT c.version, c.attempts, c.status
          FROM commandbus.command c
         WHERE c.domain = %(domain)s AND c.command_id = t.command_id
         LIMIT 1  -- keeps the planner from flattening this into a hash join
       ) c ON true
  -- only run when the status row is missing (a one-time filter per message)
  LEFT JOIN LATERAL (
        SELECT s.stream_version AS version,
               (SELECT {attempts_of_event} FROM commandbus.event e
                 WHERE e.stream_id = s.stream_id AND {attempts_of_event} IS NOT NULL
                 ORDER BY e.stream_version DESC LIMIT 1) AS attempts,
               (SELECT {status_of_event} FROM commandbus.event e
                 WHERE e.stream_id = s.stream_id AND {status_of_event} IS NOT NULL
                 ORDER BY e.stream_version DESC LIMIT 1) AS status
          FROM commandbus.event s
         WHERE c.version IS NULL
           AND s.stream_id = %(stream_prefix)s::text || t.command_id::text
         ORDER BY s.stream_version DESC
         LIMIT 1  -- the last event; not flattened: the IS NULL test gates the lookup
       ) f ON true
 ORDER BY t.msg_id
"""

# Record a group of command transitions in one statement: update each status row
# that is still at its transition's expected version (the version check of a
# command stream, which has no commandbus.stream row), append the events of those
# (THE insert of the append fragment), act on their queue messages (delete,
# archive, make visible again later) and send their replies. A command whose status
# row is missing (dropped by hand) passes if its last event is at the expected
# version (the event table's unique (stream_id, stream_version) refuses a racing
# second append). The transitions arrive as ONE jsonb array (one C-speed
# json.dumps on the client instead of a score of parameter arrays). Returns the
# stream ids that were recorded.
_TRANSITION_INPUT: Final[LiteralString] = """
WITH st AS (
    SELECT *
      FROM ROWS FROM (jsonb_to_recordset(%(transitions)s::jsonb)
               AS (stream_id text, expected bigint, new_version bigint, msg_id bigint,
                   queue_op text, delay float8, domain text, command_id uuid, status text,
                   attempts int, last_error jsonb, result jsonb, new_msg_id bigint,
                   events jsonb, reply_queue text, reply jsonb)) WITH ORDINALITY
           AS s(stream_id, expected, new_version, msg_id, queue_op, delay, domain,
                command_id, status, attempts, last_error, result, new_msg_id, events,
                reply_queue, reply, ord)
), new_events AS (
    SELECT st.stream_id, st.expected + e.ord AS stream_version, e.type AS event_type,
           -- a scheduled retry records when it will run, on the server's clock
           CASE WHEN e.type = %(command_retry_scheduled)s::text
                THEN e.data || jsonb_build_object(
                         'retry_at', now() + st.delay * interval '1 second')
                ELSE e.data
           END AS data,
           e.corr AS correlation_id, e.caus AS causation_id,
           coalesce(e.meta, jsonb_build_object()) AS metadata, st.ord
      FROM st,
           ROWS FROM (jsonb_to_recordset(st.events)
               AS (type text, data jsonb, corr uuid, caus uuid, meta jsonb)) WITH ORDINALITY
           AS e(type, data, corr, caus, meta, ord)
), proj AS (
    -- "= ANY (ARRAY(...))" keeps this to primary-key probes whatever the statistics say
    UPDATE commandbus.command c
       SET status = coalesce(st.status, c.status),
           attempts = coalesce(st.attempts, c.attempts),
           last_error = coalesce(st.last_error, c.last_error),
           result = coalesce(st.result, c.result),
           msg_id = coalesce(st.new_msg_id, c.msg_id),
           updated_at = now(),
           version = st.new_version
      FROM st
     WHERE c.domain = ANY (ARRAY(SELECT DISTINCT domain FROM st))
       AND c.command_id = ANY (ARRAY(SELECT command_id FROM st))
       AND c.domain = st.domain AND c.command_id = st.command_id AND c.version = st.expected
    RETURNING st.stream_id
), unprojected AS (
    SELECT st.stream_id FROM st
     WHERE st.stream_id NOT IN (SELECT stream_id FROM proj)
       AND NOT EXISTS (SELECT 1 FROM commandbus.command c
                        WHERE c.domain = st.domain AND c.command_id = st.command_id)
       AND st.expected = coalesce((SELECT max(e.stream_version) FROM commandbus.event e
                                    WHERE e.stream_id = st.stream_id), 0)
), passed AS (
    SELECT stream_id FROM proj UNION ALL SELECT stream_id FROM unprojected
),"""

_TRANSITION_OK: Final[LiteralString] = """, ok AS (
    SELECT st.* FROM st JOIN passed USING (stream_id)
)"""

TRANSITION_HEAD: Final[LiteralString] = _TRANSITION_INPUT + INSERT_PASSED_EVENTS + _TRANSITION_OK

# Queue actions of one domain queue, for the recorded transitions only. {archive}
# is the queues' ARCHIVE_MOVE over TRANSITION_ARCHIVED.
TRANSITION_QUEUE: Final[LiteralString] = """, {deleted} AS (
    DELETE FROM pgmq.{queue} m USING ok
     WHERE m.msg_id = ok.msg_id AND ok.queue_op = 'delete' AND ok.domain = {domain}
), {archive}, {delayed} AS (
    UPDATE pgmq.{queue} m SET vt = now() + ok.delay * interval '1 second'
      FROM ok
     WHERE m.msg_id = ok.msg_id AND ok.queue_op = 'retry' AND ok.domain = {domain}
)"""

# The messages of one domain queue that the recorded transitions archive.
TRANSITION_ARCHIVED: Final[LiteralString] = """ARRAY(
        SELECT ok.msg_id FROM ok WHERE ok.queue_op = 'archive' AND ok.domain = {domain})"""

# Replies into one reply queue.
TRANSITION_REPLY: Final[LiteralString] = """, {cte} AS (
    INSERT INTO pgmq.{queue} (vt, message, headers)
    SELECT clock_timestamp(), ok.reply->'message', ok.reply->'headers'
      FROM ok
     WHERE ok.reply_queue = {reply_queue}
)"""

TRANSITION_TAIL: Final[LiteralString] = """
SELECT stream_id FROM ok
"""

# TRANSITION_TAIL when every transition must be recorded (else all_applied raises).
TRANSITION_ALL_APPLIED: Final[LiteralString] = """
SELECT commandbus.all_applied(count(*), %(expected_rows)s, 'command outcomes') FROM ok
"""


# -- the status projection: reads, rebuild and verify ------------------------------------

COMMAND_COLUMNS: Final[LiteralString] = """
    domain, command_id, command_type, status, attempts, max_attempts, msg_id, last_error,
    result, correlation_id, reply_to, saga_id, batch_id, created_at, updated_at, version
"""

GET_COMMAND: Final[LiteralString] = (
    "SELECT"
    + COMMAND_COLUMNS
    + "FROM commandbus.command WHERE domain = %(domain)s AND command_id = %(command_id)s"
)

# An operator's cancel of a command waiting to run: its status row, locked (the
# order a worker's outcome takes its locks in: status row, then queue message).
LOCK_COMMAND: Final[LiteralString] = GET_COMMAND + " FOR UPDATE"

# A batch and its progress by status (command_batch_idx); monitoring lists them.
BATCH_SELECT: Final[LiteralString] = """
SELECT b.batch_id, b.name, b.total, b.correlation_id, b.created_at,
       coalesce((SELECT jsonb_object_agg(status, n)
                   FROM (SELECT status, count(*) AS n FROM commandbus.command
                          WHERE batch_id = b.batch_id GROUP BY status) s),
                '{}'::jsonb) AS counts
  FROM commandbus.batch b"""
GET_BATCH: Final[LiteralString] = BATCH_SELECT + "\n WHERE b.batch_id = %(batch_id)s\n"

# Every event of every command stream, stream by stream, in version order.
# %(command_streams)s: the LIKE pattern of command stream ids.
COMMAND_EVENTS: Final[LiteralString] = """
SELECT stream_id, stream_version, event_type, data, correlation_id, recorded_at
  FROM commandbus.event
 WHERE stream_id LIKE %(command_streams)s
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
