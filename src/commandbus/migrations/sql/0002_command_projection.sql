-- commandbus 0002: read models derived from the event stream.
--
-- commandbus.command is the status projection of every command. It is written in
-- the same transaction as each event of the command's stream and carries the
-- stream version it reflects, so an update can never move it backwards. It can be
-- dropped and rebuilt from commandbus.event alone.

CREATE TABLE commandbus.command (
    domain          text        NOT NULL,
    command_id      uuid        NOT NULL,
    command_type    text        NOT NULL,
    status          text        NOT NULL,
    attempts        integer     NOT NULL DEFAULT 0,
    max_attempts    integer     NOT NULL,
    msg_id          bigint,
    last_error      jsonb,
    result          jsonb,
    correlation_id  uuid        NOT NULL,
    reply_to        text,
    saga_id         uuid,
    batch_id        uuid,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    version         bigint      NOT NULL,
    PRIMARY KEY (domain, command_id)
) WITH (fillfactor = 80);

-- Listings page by (created_at, command_id), which never change.
CREATE INDEX command_domain_status_idx
    ON commandbus.command (domain, status, created_at, command_id);
CREATE INDEX command_correlation_idx
    ON commandbus.command (correlation_id, created_at, command_id);
CREATE INDEX command_batch_idx ON commandbus.command (batch_id) WHERE batch_id IS NOT NULL;
CREATE INDEX command_saga_idx ON commandbus.command (saga_id) WHERE saga_id IS NOT NULL;

-- A batch: its own stream (BatchCreated ...) and this row; its progress is counted
-- from commandbus.command so that completions never contend on one hot row.
CREATE TABLE commandbus.batch (
    batch_id        uuid        PRIMARY KEY,
    name            text,
    total           integer     NOT NULL,
    correlation_id  uuid        NOT NULL,
    created_at      timestamptz NOT NULL,
    version         bigint      NOT NULL
);

-- Queues this library created (one per domain, plus reply queues).
CREATE TABLE commandbus.queue (
    queue_name  text        PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now()
);
