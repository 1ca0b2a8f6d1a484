"""SQL of the queues: creation, visibility, release, archive, plain sends.

Queue tables are named only through ``psycopg.sql.Identifier`` (``{queue}``,
``{archive}``) after the queue name was validated.
"""

from __future__ import annotations

from typing import Final, LiteralString

QUEUE_EXISTS: Final[LiteralString] = "SELECT 1 FROM commandbus.queue WHERE queue_name = %(queue)s"

CREATE_QUEUE: Final[LiteralString] = "SELECT pgmq.create(%(queue)s::text)"

QUEUE_LOCK: Final[LiteralString] = (
    "SELECT pg_advisory_xact_lock(hashtext('pgmq.queue_' || %(queue)s))"
)

NEXT_VISIBLE: Final[LiteralString] = (
    "SELECT extract(epoch FROM min(vt) - clock_timestamp()) FROM pgmq.{queue}"
)

RELEASE: Final[LiteralString] = """
UPDATE pgmq.{queue}
   SET vt = clock_timestamp(),
       read_ct = read_ct - CASE WHEN msg_id = ANY(%(unstarted)s::bigint[]) THEN 1 ELSE 0 END
 WHERE msg_id = ANY(%(started)s::bigint[]) OR msg_id = ANY(%(unstarted)s::bigint[])
"""

# Move messages from a queue to its archive table: THE definition (PGMQ's archive
# row), composed into every statement that archives. Two CTEs, named by the
# identifiers {moved} (its rows: the messages moved) and {archived}; {msg_ids} is a
# bigint[] expression of the messages to move ("= ANY": primary-key probes).
ARCHIVE_MOVE: Final[LiteralString] = """{moved} AS (
    DELETE FROM pgmq.{queue} m
     WHERE m.msg_id = ANY ({msg_ids})
    RETURNING m.msg_id, m.vt, m.read_ct, m.enqueued_at, m.last_read_at, m.message, m.headers
), {archived} AS (
    INSERT INTO pgmq.{archive} (msg_id, vt, read_ct, enqueued_at, last_read_at, message, headers)
    SELECT msg_id, vt, read_ct, enqueued_at, last_read_at, message, headers FROM {moved}
)"""

# Set messages aside in the queue's archive table: {move} is ARCHIVE_MOVE over
# %(msg_ids)s, with CTEs "moved" and "archived". Returns how many were moved.
ARCHIVE: Final[LiteralString] = """
WITH {move}
SELECT count(*) FROM moved
"""

EXTEND_VT: Final[LiteralString] = """
UPDATE pgmq.{queue} SET vt = clock_timestamp() + %(seconds)s * interval '1 second'
 WHERE msg_id = %(msg_id)s
RETURNING vt
"""

SEND_MESSAGE: Final[LiteralString] = """
INSERT INTO pgmq.{queue} (vt, message, headers)
VALUES (clock_timestamp(), %(message)s::jsonb, %(headers)s::jsonb)
RETURNING msg_id
"""

# Hand messages back unread for a moment: visible again after %(delay)s seconds,
# their read given back (a delivery that never started does not count).
POSTPONE: Final[LiteralString] = """
UPDATE pgmq.{queue}
   SET vt = clock_timestamp() + make_interval(secs => %(delay)s::float8),
       read_ct = greatest(read_ct - 1, 0)
 WHERE msg_id = ANY(%(msg_ids)s::bigint[])
"""

# A queue's wake-up throttle interval (see migration 0004).
WAKEUP_THROTTLE: Final[LiteralString] = (
    "SELECT throttle_ms FROM commandbus.queue_wakeup WHERE queue_name = %(queue)s"
)

# -- heartbeats (see migration 0007) --------------------------------------------------------

# A consumer's beat: its row is written if missing (the first beat, or after a
# server crash emptied the unlogged table) and its last_seen_at moved to now.
# %(stopped)s marks it stopped for good: a later beat never clears that.
HEARTBEAT: Final[LiteralString] = """
INSERT INTO commandbus.heartbeat AS h
       (consumer_id, process_id, host, pid, queue, concurrency, interval_ms,
        started_at, last_seen_at, stopped_at)
VALUES (%(consumer_id)s, %(process_id)s, %(host)s, %(pid)s, %(queue)s, %(concurrency)s,
        %(interval_ms)s, coalesce(%(started_at)s::timestamptz, now()), now(),
        CASE WHEN %(stopped)s THEN now() END)
ON CONFLICT (consumer_id) DO UPDATE
   SET last_seen_at = now(),
       stopped_at = coalesce(h.stopped_at, excluded.stopped_at)
RETURNING started_at
"""

# Rows of consumers that stopped, or went silent, more than %(keep)s seconds ago.
PRUNE_HEARTBEATS: Final[LiteralString] = """
DELETE FROM commandbus.heartbeat
 WHERE coalesce(stopped_at, last_seen_at) < now() - %(keep)s * interval '1 second'
"""

# A queue's gauges (with a heartbeat, when metrics are recorded): the messages ready
# to be read, and how long the longest-waiting of them has been visible (seconds).
QUEUE_READING: Final[LiteralString] = """
SELECT count(*),
       coalesce(extract(epoch FROM now() - min(vt)), 0)::float8
  FROM pgmq.{queue}
 WHERE vt <= now()
"""

# A command's queue message, locked (an operator's action, after the command's row):
# a reader skips it from here on (SKIP LOCKED), and a read that took it first has
# committed (the row is re-read after the wait).
LOCK_MESSAGE: Final[LiteralString] = """
SELECT vt > clock_timestamp() AS invisible, read_ct, vt
  FROM pgmq.{queue}
 WHERE msg_id = %(msg_id)s
   FOR UPDATE
"""

# Whether a queue's PGMQ table exists (%(table)s: 'pgmq.q_<queue>', a validated name).
QUEUE_TABLE_EXISTS: Final[LiteralString] = "SELECT to_regclass(%(table)s) IS NOT NULL"

# Replies sent on their own (replies a worker meant to act on in the outcome's
# transaction but did not): {queue} is the reply queue's table.
SEND_REPLIES: Final[LiteralString] = """
INSERT INTO pgmq.{queue} (vt, message, headers)
SELECT clock_timestamp(), r.message, r.headers
  FROM jsonb_to_recordset(%(replies)s::jsonb) AS r(message jsonb, headers jsonb)
"""
