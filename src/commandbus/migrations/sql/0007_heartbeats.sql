-- commandbus 0007: heartbeats of the running workers and coordinators.
--
-- Every queue consumer (a worker serving one domain, a saga coordinator) keeps
-- one row here, refreshed every few seconds by a side task of its own, so that
-- `commandbus status` can say who serves which queue. The consumers of one
-- process share its process_id. A consumer that stops gracefully sets
-- stopped_at; one that was killed stops beating and is stale once a few of its
-- own intervals (interval_ms) have passed. Consumers delete the rows that
-- stopped or went silent more than a day ago, so the table stays small.
-- UNLOGGED: the rows say what runs now; after a server crash empties the table,
-- every live consumer writes its row again at its next beat.

CREATE UNLOGGED TABLE commandbus.heartbeat (
    consumer_id   uuid        PRIMARY KEY,
    process_id    uuid        NOT NULL,
    host          text        NOT NULL,
    pid           integer     NOT NULL,
    queue         text        NOT NULL,
    concurrency   integer     NOT NULL,
    interval_ms   integer     NOT NULL CHECK (interval_ms > 0),
    started_at    timestamptz NOT NULL,
    last_seen_at  timestamptz NOT NULL,
    stopped_at    timestamptz
);
