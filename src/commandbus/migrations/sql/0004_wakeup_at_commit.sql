-- commandbus 0004: wake-ups decided at commit, never held back by an open transaction.
--
-- 0003 claimed the queue's throttle row when a message was inserted and kept it
-- locked until the sender committed. While any sender's transaction to a domain
-- stayed open, every other sender skipped its NOTIFY (SKIP LOCKED) and idle
-- workers waited for their poll interval; and a send inside a REPEATABLE READ
-- transaction failed with a serialization error whenever another sender had
-- notified since its snapshot.
--
-- Now the decision is taken when the sender commits. The first row a transaction
-- inserts into a queue queues a deferred constraint trigger (its WHEN clause
-- marks the transaction in a transaction-local setting, so later rows queue
-- nothing), which runs just before COMMIT: it notifies unless the queue was
-- notified less than its throttle interval ago. NOTIFY is delivered at commit, so
-- a notification is delivered right after it was counted (unless the sender runs
-- SET CONSTRAINTS ALL IMMEDIATE and then stays open). The time of the
-- last notification lives in an unlogged sequence per queue: setval is not
-- transactional, takes no row lock and is no conflict for any snapshot, so no
-- transaction waits for, or is refused because of, another's. A transaction that
-- rolls back never reaches the trigger and counts nothing. Two committers racing
-- may both notify, which is harmless. What throttling still allows: a sender
-- committing within the interval after another's notification skips its own, and
-- a reader woken by that earlier one may have looked before this commit; it finds
-- the message at its next look. Workers still poll (and know when the next
-- delayed message shows), so a skipped wake-up costs latency, never a message.

ALTER TABLE commandbus.queue_wakeup DROP COLUMN last_notified_at;

-- The deferred trigger of every queue table. Arguments: the LISTEN channel, the
-- queue's clock sequence and its throttle interval in microseconds (arguments,
-- not a table lookup: this runs at every commit that sent to the queue). A queue
-- whose clock sequence is missing is not throttled.
CREATE FUNCTION commandbus.wake_queue_readers_at_commit() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    clock     regclass := to_regclass(TG_ARGV[1]);
    throttle  bigint := TG_ARGV[2]::bigint;
    now_us    bigint;
BEGIN
    IF clock IS NOT NULL AND throttle > 0 THEN
        now_us := (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
        -- abs(): a clock that went backwards does not silence the queue
        IF abs(now_us - coalesce(pg_sequence_last_value(clock), 0)) < throttle THEN
            RETURN NULL;
        END IF;
        PERFORM setval(clock, now_us);
    END IF;
    PERFORM pg_notify(TG_ARGV[0], '');
    RETURN NULL;
END;
$$;

-- 0003's statement trigger, still installed by an older commandbus that creates
-- a queue after this migration (during a rolling upgrade): it now notifies on
-- every insert, unthrottled, and is never suppressed by another transaction.
CREATE OR REPLACE FUNCTION commandbus.wake_queue_readers() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('commandbus_' || substring(TG_TABLE_NAME FROM 3), '');
    RETURN NULL;
END;
$$;

-- Give queue qname (its PGMQ table exists) its clock sequence and the deferred
-- trigger, replacing 0003's trigger, and record its throttle interval. Running
-- it again with another interval changes the interval.
CREATE FUNCTION commandbus.install_queue_wakeup(qname text, throttle_ms integer)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    queue_table text := format('pgmq.%I', 'q_' || qname);
    clock       text := format('commandbus.%I', 'wakeup_' || qname);
    setting     text := 'commandbus.wakeup_' || qname;
BEGIN
    EXECUTE format('CREATE UNLOGGED SEQUENCE IF NOT EXISTS %s', clock);
    EXECUTE format('DROP TRIGGER IF EXISTS commandbus_wake_readers ON %s', queue_table);
    EXECUTE format('DROP TRIGGER IF EXISTS commandbus_wakeup ON %s', queue_table);
    EXECUTE format(
        'CREATE CONSTRAINT TRIGGER commandbus_wakeup AFTER INSERT ON %s'
        ' DEFERRABLE INITIALLY DEFERRED FOR EACH ROW'
        ' WHEN (CASE WHEN coalesce(current_setting(%L, true), %L) = %L'
        '            THEN set_config(%L, %L, true) IS NOT NULL'
        '            ELSE false END)'
        ' EXECUTE FUNCTION commandbus.wake_queue_readers_at_commit(%L, %L, %L)',
        queue_table, setting, '', '', setting, 'queued',
        'commandbus_' || qname, clock, throttle_ms::bigint * 1000);
    INSERT INTO commandbus.queue_wakeup (queue_name, throttle_ms)
    VALUES (qname, throttle_ms)
    ON CONFLICT (queue_name) DO UPDATE SET throttle_ms = excluded.throttle_ms;
END;
$$;

-- The queues that exist now.
DO $$
DECLARE
    q record;
BEGIN
    FOR q IN
        SELECT c.queue_name, coalesce(w.throttle_ms, 2) AS throttle_ms
          FROM commandbus.queue c
          LEFT JOIN commandbus.queue_wakeup w USING (queue_name)
         WHERE to_regclass(format('pgmq.%I', 'q_' || c.queue_name)) IS NOT NULL
         ORDER BY c.queue_name
    LOOP
        PERFORM commandbus.install_queue_wakeup(q.queue_name, q.throttle_ms);
    END LOOP;
END;
$$;
