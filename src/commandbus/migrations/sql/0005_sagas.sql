-- commandbus 0005: the saga status projection.
--
-- A saga's events live in its stream ("saga:<saga id>") in commandbus.event, as
-- for commands. commandbus.saga is the status row of each saga: written in the
-- same transaction as every transition, carrying the stream version it reflects
-- and the folded state (step results, what the saga waits on) that the
-- coordinator decides from. It can be dropped and rebuilt from commandbus.event.

CREATE TABLE commandbus.saga (
    saga_id             uuid        PRIMARY KEY,
    name                text        NOT NULL,
    definition_version  integer     NOT NULL,
    status              text        NOT NULL,
    current_steps       text[]      NOT NULL,
    correlation_id      uuid        NOT NULL,
    idempotency_key     text,
    last_error          jsonb,
    state               jsonb       NOT NULL,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    ended_at            timestamptz,
    version             bigint      NOT NULL
) WITH (fillfactor = 80);

-- Listings page by (created_at, saga_id), which never change; "stuck longer than"
-- reads (status, updated_at).
CREATE INDEX saga_status_idx ON commandbus.saga (status, updated_at, saga_id);
CREATE INDEX saga_name_idx ON commandbus.saga (name, definition_version, created_at, saga_id);
CREATE INDEX saga_created_idx ON commandbus.saga (created_at, saga_id);
CREATE INDEX saga_correlation_idx ON commandbus.saga (correlation_id);
