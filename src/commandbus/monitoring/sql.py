"""SQL of the status snapshot: bounded reads of the status tables, queues and heartbeats.

Nothing here scans the event table. Status counts stop at a limit (each one an
index range scan of the status table, cut off there); queue figures scan the
PGMQ table of each queue, which holds only messages not yet done.
"""

from __future__ import annotations

from typing import Final, LiteralString

from commandbus.engine.commands.sql import BATCH_SELECT

# The snapshot's transaction: every figure of one moment, nothing written.
SNAPSHOT_TRANSACTION: Final[LiteralString] = (
    "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"
)

# Run first in the snapshot's REPEATABLE READ, READ ONLY transaction: every later
# statement gives up after %(timeout_ms)s, and now() is the snapshot's time.
BEGIN_SNAPSHOT: Final[LiteralString] = (
    "SELECT set_config('statement_timeout', %(timeout_ms)s::text, true), now(), current_database()"
)

# The queues commandbus created whose PGMQ table exists.
QUEUES: Final[LiteralString] = """
SELECT queue_name FROM commandbus.queue
 WHERE to_regclass('pgmq.' || quote_ident('q_' || queue_name)) IS NOT NULL
 ORDER BY queue_name
"""

# One queue's messages by what they wait for; the parts of all queues are joined
# with UNION ALL into one statement. {queue} is its PGMQ table, {name} its name
# (a literal). An invisible message is in flight when it was read after its
# command's last recorded transition (the read set last_read_at; recording an
# outcome sets the status row's updated_at, and a retry's backoff keeps the
# message invisible); a message of no command (a reply, a timer) is in flight
# when it was read at all.
QUEUE_DEPTH: Final[LiteralString] = """
SELECT {name}::text,
       count(*) FILTER (WHERE m.vt <= now()),
       min(m.vt) FILTER (WHERE m.vt <= now()),
       count(*) FILTER (WHERE m.vt > now() AND m.last_read_at IS NOT NULL
                          AND m.last_read_at >= coalesce(c.updated_at, '-infinity')),
       count(*) FILTER (WHERE m.vt > now())
  FROM pgmq.{queue} m
  -- only for messages read and invisible: one primary-key probe each
  LEFT JOIN LATERAL (
        SELECT c.updated_at FROM commandbus.command c
         WHERE m.vt > now() AND m.last_read_at IS NOT NULL
           AND c.domain = {name}
           AND c.command_id = CASE
                 WHEN m.message->>'command_id'
                      ~* '^[0-9a-f]{{8}}-([0-9a-f]{{4}}-){{3}}[0-9a-f]{{12}}$'
                 THEN (m.message->>'command_id')::uuid END
         LIMIT 1
       ) c ON true
"""

# Commands of each domain in each status, each count stopping at %(limit)s.
COMMAND_COUNTS: Final[LiteralString] = """
SELECT d.domain, s.status,
       (SELECT count(*) FROM (SELECT 1 FROM commandbus.command c
                               WHERE c.domain = d.domain AND c.status = s.status
                               LIMIT %(limit)s) x)
  FROM unnest(%(domains)s::text[]) AS d(domain)
 CROSS JOIN unnest(%(statuses)s::text[]) AS s(status)
"""

# Sagas in each status, each count stopping at %(limit)s.
SAGA_COUNTS: Final[LiteralString] = """
SELECT s.status,
       (SELECT count(*) FROM (SELECT 1 FROM commandbus.saga g
                               WHERE g.status = s.status LIMIT %(limit)s) x)
  FROM unnest(%(statuses)s::text[]) AS s(status)
"""

# Heartbeats of the consumers alive (beaten within %(beats)s of their own
# intervals), and of those that stopped or went silent in the last %(window)s
# seconds.
HEARTBEATS: Final[LiteralString] = """
SELECT consumer_id, process_id, host, pid, queue, concurrency, interval_ms,
       started_at, last_seen_at, stopped_at,
       stopped_at IS NULL
       AND last_seen_at >= now() - %(beats)s * interval_ms * interval '1 millisecond' AS live
  FROM commandbus.heartbeat
 WHERE coalesce(stopped_at, last_seen_at) >= now() - %(window)s * interval '1 second'
    OR (stopped_at IS NULL
        AND last_seen_at >= now() - %(beats)s * interval_ms * interval '1 millisecond')
 ORDER BY host, pid, process_id, started_at, queue
"""

# A dashboard's read transaction: every later statement gives up after %(timeout_ms)s.
BOUNDED_TRANSACTION: Final[LiteralString] = (
    "SELECT set_config('statement_timeout', %(timeout_ms)s::text, true)"
)
READ_ONLY_TRANSACTION: Final[LiteralString] = "SET TRANSACTION READ ONLY"

# Outcome events per minute over the last %(minutes)s minutes (the current one
# included), from the partial index of outcome events (0008_event_time_index) alone.
# {outcomes} is the literal list of that index's event types (the planner must see
# that the query's condition implies the index's).
THROUGHPUT: Final[LiteralString] = """
SELECT m.minute, coalesce(c.completed, 0), coalesce(c.failed, 0)
  FROM generate_series(date_trunc('minute', now()) - (%(minutes)s - 1) * interval '1 minute',
                       date_trunc('minute', now()), interval '1 minute') AS m(minute)
  LEFT JOIN (
        SELECT date_trunc('minute', e.recorded_at) AS minute,
               count(*) FILTER (WHERE e.event_type = ANY(%(completed)s::text[])) AS completed,
               count(*) FILTER (WHERE e.event_type = ANY(%(failed)s::text[])) AS failed
          FROM commandbus.event e
         WHERE e.recorded_at >= date_trunc('minute', now())
                                - (%(minutes)s - 1) * interval '1 minute'
           AND e.event_type IN ({outcomes})
         GROUP BY 1
       ) c USING (minute)
 ORDER BY m.minute
"""

# Batches newest first, keyset-paged over (created_at, batch_id) (0009's index), each
# with its progress (the engine's one batch query, BATCH_SELECT).
LIST_BATCHES: Final[LiteralString] = (
    BATCH_SELECT
    + """
 WHERE %(after_ts)s::timestamptz IS NULL
    OR (b.created_at, b.batch_id) < (%(after_ts)s::timestamptz, %(after_id)s::uuid)
 ORDER BY b.created_at DESC, b.batch_id DESC
 LIMIT %(limit)s
"""
)
