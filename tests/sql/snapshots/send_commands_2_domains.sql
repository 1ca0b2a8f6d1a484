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
), created AS (
    INSERT INTO commandbus.stream (stream_id, stream_type, version)
    SELECT stream_id, %(command_stream)s::text, 1 FROM input
    ON CONFLICT (stream_id) DO NOTHING
    RETURNING stream_id
), go AS (
    SELECT input.* FROM input
     WHERE (SELECT count(*) FROM created) = %(expected_streams)s
), "msg_0" AS (
    INSERT INTO pgmq."q_payments" (vt, message, headers)
    SELECT clock_timestamp() + go.delay * interval '1 second', go.message, go.headers
      FROM go WHERE go.domain = 'payments'
    RETURNING msg_id, 'payments'::text AS domain, message->>'command_id' AS command_id
), "msg_1" AS (
    INSERT INTO pgmq."q_shipments" (vt, message, headers)
    SELECT clock_timestamp() + go.delay * interval '1 second', go.message, go.headers
      FROM go WHERE go.domain = 'shipments'
    RETURNING msg_id, 'shipments'::text AS domain, message->>'command_id' AS command_id
), msgs AS (
    SELECT msg_id, domain, command_id FROM "msg_0" UNION ALL SELECT msg_id, domain, command_id FROM "msg_1"
), sent AS (
    SELECT go.*, msgs.msg_id
      FROM go JOIN msgs ON msgs.domain = go.domain AND msgs.command_id = go.command_id::text
), evt AS (
    INSERT INTO commandbus.event
           (stream_id, stream_version, event_type, data, correlation_id, causation_id, metadata)
    SELECT stream_id, 1, %(command_sent)s::text,
           message || jsonb_build_object('domain', domain, 'delay_seconds', delay,
                                         'msg_id', msg_id),
           correlation_id, causation_id, metadata
      FROM sent
), proj AS (
    INSERT INTO commandbus.command
           (domain, command_id, command_type, status, attempts, max_attempts, msg_id,
            correlation_id, reply_to, saga_id, batch_id, created_at, updated_at, version)
    SELECT domain, command_id, command_type, 'PENDING', 0, max_attempts, msg_id,
           correlation_id, reply_to, saga_id, NULL::uuid, now(), now(), 1
      FROM sent
)
SELECT input.domain, input.command_id, sent.msg_id,
       input.stream_id IN (SELECT stream_id FROM created) AS is_new
  FROM input LEFT JOIN sent USING (stream_id)
