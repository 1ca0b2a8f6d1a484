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
), inserted AS (
    INSERT INTO commandbus.event
           (stream_id, stream_version, event_type, data, correlation_id, causation_id, metadata)
    SELECT e.stream_id, e.stream_version, e.event_type, e.data, e.correlation_id,
           e.causation_id, e.metadata
      FROM new_events e
     WHERE e.stream_id IN (SELECT stream_id FROM passed)
     ORDER BY e.ord, e.stream_version
    RETURNING position, stream_id
), ok AS (
    SELECT st.* FROM st JOIN passed USING (stream_id)
), "deleted_0" AS (
    DELETE FROM pgmq."q_payments" m USING ok
     WHERE m.msg_id = ok.msg_id AND ok.queue_op = 'delete' AND ok.domain = 'payments'
), "moved_0" AS (
    DELETE FROM pgmq."q_payments" m
     WHERE m.msg_id = ANY (ARRAY(
        SELECT ok.msg_id FROM ok WHERE ok.queue_op = 'archive' AND ok.domain = 'payments'))
    RETURNING m.msg_id, m.vt, m.read_ct, m.enqueued_at, m.last_read_at, m.message, m.headers
), "archived_0" AS (
    INSERT INTO pgmq."a_payments" (msg_id, vt, read_ct, enqueued_at, last_read_at, message, headers)
    SELECT msg_id, vt, read_ct, enqueued_at, last_read_at, message, headers FROM "moved_0"
), "delayed_0" AS (
    UPDATE pgmq."q_payments" m SET vt = now() + ok.delay * interval '1 second'
      FROM ok
     WHERE m.msg_id = ok.msg_id AND ok.queue_op = 'retry' AND ok.domain = 'payments'
)
SELECT commandbus.all_applied(count(*), %(expected_rows)s, 'command outcomes') FROM ok
