-- commandbus 0003: waking idle workers without a NOTIFY per message.
--
-- A transaction that runs NOTIFY serialises its commit with every other notifying
-- transaction, so notifying on every send would cap throughput. Instead each
-- domain queue gets a statement-level trigger that notifies at most once per
-- throttle interval. The throttle row is claimed with SKIP LOCKED: a sender never
-- waits for another sender's notification. Workers also poll (and know when the
-- next delayed message becomes visible), so a suppressed wake-up costs latency,
-- never a message.

CREATE UNLOGGED TABLE commandbus.queue_wakeup (
    queue_name        text        PRIMARY KEY,
    throttle_ms       integer     NOT NULL CHECK (throttle_ms >= 0),
    last_notified_at  timestamptz NOT NULL DEFAULT 'epoch'
);

CREATE FUNCTION commandbus.wake_queue_readers() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    qname text := substring(TG_TABLE_NAME FROM 3);
BEGIN
    PERFORM 1
       FROM commandbus.queue_wakeup w
      WHERE w.queue_name = qname
        AND w.last_notified_at <= clock_timestamp() - w.throttle_ms * interval '1 millisecond'
        FOR UPDATE SKIP LOCKED;
    IF FOUND THEN
        UPDATE commandbus.queue_wakeup
           SET last_notified_at = clock_timestamp()
         WHERE queue_name = qname;
        PERFORM pg_notify('commandbus_' || qname, '');
    END IF;
    RETURN NULL;
END;
$$;
