"""SQL of the sagas, in one place.

Values travel as parameters; the saga queue's table is named only through
``psycopg.sql.Identifier`` (``{queue}``). Event and stream type names are
parameters named after their constants in :mod:`commandbus.event_types`.
"""

from __future__ import annotations

from typing import Final, LiteralString

from commandbus.engine.eventstore.sql import append_with_expected_version

# Record a group of saga transitions in ONE statement: append each saga's events
# with its expected version (THE append fragment, each stream on its own; a saga
# started for the first time expects 0), upsert the saga's status row, delete the
# saga-queue messages the transition consumed (replies, timers that can no longer
# fire) and insert its new timers (their message ids drawn beforehand), all only
# for the sagas whose expected version held. Returns the saga ids recorded.
_TRANSITION_INPUT: Final[LiteralString] = """
WITH st AS (
    SELECT s.*, %(saga_stream)s::text AS stream_type
      FROM ROWS FROM (jsonb_to_recordset(%(transitions)s::jsonb)
               AS (stream_id text, expected bigint, new_version bigint, saga_id uuid,
                   events jsonb, name text, definition_version int, status text,
                   current_steps text[], correlation_id uuid, idempotency_key text,
                   last_error jsonb, state jsonb, ended boolean, created_at timestamptz,
                   ended_at timestamptz, delete_ids bigint[], timers jsonb)) WITH ORDINALITY
           AS s(stream_id, expected, new_version, saga_id, events, name, definition_version,
                status, current_steps, correlation_id, idempotency_key, last_error, state,
                ended, created_at, ended_at, delete_ids, timers, ord)
), new_events AS (
    SELECT st.stream_id, st.expected + e.ord AS stream_version, e.type AS event_type, e.data,
           e.corr AS correlation_id, e.caus AS causation_id,
           coalesce(e.meta, jsonb_build_object()) AS metadata, st.ord
      FROM st,
           ROWS FROM (jsonb_to_recordset(st.events)
               AS (type text, data jsonb, corr uuid, caus uuid, meta jsonb)) WITH ORDINALITY
           AS e(type, data, corr, caus, meta, ord)
),"""

_TRANSITION_TAIL: Final[LiteralString] = """, ok AS (
    SELECT st.* FROM st JOIN passed USING (stream_id)
), upsert AS (
    INSERT INTO commandbus.saga AS s
           (saga_id, name, definition_version, status, current_steps, correlation_id,
            idempotency_key, last_error, state, created_at, updated_at, ended_at, version)
    SELECT saga_id, name, definition_version, status, current_steps, correlation_id,
           idempotency_key, last_error, state, coalesce(created_at, now()), now(),
           CASE WHEN ended THEN coalesce(ended_at, now()) END, new_version
      FROM ok
    ON CONFLICT (saga_id) DO UPDATE
       SET status = excluded.status,
           current_steps = excluded.current_steps,
           last_error = excluded.last_error,
           state = excluded.state,
           updated_at = excluded.updated_at,
           -- the time it ended stays the time it first ended (unless reopened)
           ended_at = CASE WHEN excluded.ended_at IS NULL THEN NULL
                           ELSE coalesce(s.ended_at, excluded.ended_at) END,
           version = excluded.version
     WHERE s.version < excluded.version
), deleted AS (
    DELETE FROM pgmq.{queue} m
     WHERE m.msg_id = ANY (ARRAY(SELECT unnest(ok.delete_ids) FROM ok))
), timers AS (
    INSERT INTO pgmq.{queue} (msg_id, vt, message, headers) OVERRIDING SYSTEM VALUE
    SELECT t.msg_id, clock_timestamp() + t.seconds * interval '1 second', t.message,
           coalesce(t.headers, jsonb_build_object())
      FROM ok, jsonb_to_recordset(ok.timers)
           AS t(msg_id bigint, seconds float8, message jsonb, headers jsonb)
)"""

TRANSITION: Final[LiteralString] = (
    _TRANSITION_INPUT
    + append_with_expected_version(all_or_nothing=False)
    + _TRANSITION_TAIL
    + "\nSELECT saga_id FROM ok\n"
)

# TRANSITION when every saga must be recorded (for a script: commandbus.all_applied
# raises, undoing the whole transaction, otherwise); one row, the number recorded.
TRANSITION_ALL_APPLIED: Final[LiteralString] = (
    _TRANSITION_INPUT
    + append_with_expected_version(all_or_nothing=False)
    + _TRANSITION_TAIL
    + "\nSELECT commandbus.all_applied(count(*), %(expected_rows)s, 'saga transitions') FROM ok\n"
)

# Message ids for new timers, drawn from the saga queue's own identity sequence so
# that the transition's events can name the timer they set.
ALLOCATE_MSG_IDS: Final[LiteralString] = """
SELECT nextval(pg_get_serial_sequence(%(table)s, 'msg_id')) FROM generate_series(1, %(n)s)
"""

# The stored state of sagas, with the stream version it reflects and when it began.
LOAD_STATES: Final[LiteralString] = """
SELECT saga_id, version, state, created_at
  FROM commandbus.saga WHERE saga_id = ANY (%(ids)s::uuid[])
"""

# The events of some saga streams (for a saga whose status row is missing), stream
# by stream, with their transaction.
SAGA_EVENTS: Final[LiteralString] = """
SELECT stream_id, stream_version, event_type, data, recorded_at, transaction_id::text
  FROM commandbus.event
 WHERE stream_id = ANY (%(stream_ids)s::text[])
 ORDER BY stream_id, stream_version
"""

# Every event of every saga stream, stream by stream, with its transaction.
ALL_SAGA_EVENTS: Final[LiteralString] = """
SELECT stream_id, stream_version, event_type, data, recorded_at, transaction_id::text
  FROM commandbus.event
 WHERE stream_id LIKE %(saga_streams)s
 ORDER BY stream_id, stream_version
"""

# -- reading the saga queue -----------------------------------------------------------------

READ: Final[LiteralString] = """
WITH picked AS (
    SELECT msg_id FROM pgmq.{queue}
     WHERE vt <= clock_timestamp()
     ORDER BY vt
     LIMIT %(qty)s
       FOR UPDATE SKIP LOCKED
)
UPDATE pgmq.{queue} m
   SET vt = clock_timestamp() + %(vt)s * interval '1 second',
       read_ct = m.read_ct + 1,
       last_read_at = clock_timestamp()
  FROM picked
 WHERE m.msg_id = picked.msg_id
RETURNING m.msg_id, m.read_ct, m.message, m.headers
"""

DELETE_MESSAGES: Final[LiteralString] = (
    "DELETE FROM pgmq.{queue} WHERE msg_id = ANY (%(ids)s::bigint[])"
)

# One of a saga's commands: its domain and status (through the saga index), locked
# against an operator's concurrent action on it until the caller's transaction ends.
SAGA_COMMAND: Final[LiteralString] = """
SELECT domain, status FROM commandbus.command
 WHERE saga_id = %(saga_id)s AND command_id = %(command_id)s
   FOR SHARE
"""

# The status of each of a saga's commands (through the saga index).
SAGA_COMMAND_STATUSES: Final[LiteralString] = """
SELECT command_id, status FROM commandbus.command WHERE saga_id = %(saga_id)s
"""

# Whether operators' requests for a saga wait in the saga queue (a scan of the saga
# queue, which holds only what is not decided yet: for an operator's action).
PENDING_CONTROL: Final[LiteralString] = """
SELECT EXISTS (SELECT 1 FROM pgmq.{queue}
                WHERE message->>'kind' = 'control' AND message->>'saga_id' = %(saga_id)s)
"""

# An operator's request (cancel, pause, resume, mark_compensated), for the coordinator
# to carry out.
SEND_CONTROL: Final[LiteralString] = """
INSERT INTO pgmq.{queue} (vt, message, headers)
VALUES (clock_timestamp(), %(message)s::jsonb, jsonb_build_object())
RETURNING msg_id
"""

# -- the status projection: reads, rebuild, verify -------------------------------------------

SAGA_COLUMNS: Final[LiteralString] = """
    saga_id, name, definition_version, status, current_steps, correlation_id,
    idempotency_key, last_error, state, created_at, updated_at, ended_at, version
"""

GET_SAGA: Final[LiteralString] = (
    "SELECT" + SAGA_COLUMNS + "FROM commandbus.saga WHERE saga_id = %(saga_id)s"
)

# Keyset paging over (created_at, saga_id); each filter is optional.
# %(stuck_seconds)s: only sagas not final whose last change is older than that.
LIST_SAGAS: Final[LiteralString] = (
    "SELECT"
    + SAGA_COLUMNS
    + """
  FROM commandbus.saga
 WHERE (%(status)s::text IS NULL OR status = %(status)s)
   AND (%(name)s::text IS NULL OR name = %(name)s)
   AND (%(version)s::int IS NULL OR definition_version = %(version)s)
   AND (%(correlation_id)s::uuid IS NULL OR correlation_id = %(correlation_id)s)
   AND (%(stuck_seconds)s::float8 IS NULL
        OR (ended_at IS NULL
            AND updated_at < now() - %(stuck_seconds)s::float8 * interval '1 second'))
   AND (%(after_ts)s::timestamptz IS NULL
        OR (created_at, saga_id) > (%(after_ts)s::timestamptz, %(after_id)s::uuid))
 ORDER BY created_at, saga_id
 LIMIT %(limit)s
"""
)

COUNT_BY_STATUS: Final[LiteralString] = """
SELECT status, count(*) FROM commandbus.saga GROUP BY status ORDER BY status
"""

ALL_SAGAS: Final[LiteralString] = "SELECT" + SAGA_COLUMNS + "FROM commandbus.saga ORDER BY saga_id"

# Replacing the live rows (see the commands' LOCK_LIVE): writers wait, readers go on.
LOCK_LIVE: Final[LiteralString] = "LOCK TABLE commandbus.saga IN SHARE ROW EXCLUSIVE MODE"
DELETE_LIVE: Final[LiteralString] = "DELETE FROM commandbus.saga"
# {table} is an identifier.
COPY_INTO: Final[LiteralString] = "COPY {table} (" + SAGA_COLUMNS + ") FROM STDIN"
