-- Checkpoints of every subscriber (projection versions and process managers).
CREATE TABLE strata_checkpoints (
    subscriber TEXT        PRIMARY KEY,
    position   BIGINT      NOT NULL DEFAULT 0,
    state      TEXT        NOT NULL DEFAULT 'running',
    error      TEXT,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Events a subscriber could not apply, with the error.
CREATE TABLE strata_dead_letters (
    id          BIGSERIAL   PRIMARY KEY,
    subscriber  TEXT        NOT NULL,
    position    BIGINT      NOT NULL,
    event_id    UUID        NOT NULL,
    stream_id   TEXT        NOT NULL,
    event_type  TEXT        NOT NULL,
    error       TEXT        NOT NULL,
    attempts    INTEGER     NOT NULL,
    status      TEXT        NOT NULL DEFAULT 'parked',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    resolved_at TIMESTAMPTZ
);
CREATE INDEX strata_dead_letters_subscriber ON strata_dead_letters (subscriber, id);

-- View tables (strata_view_<name>_v<version>) are created by the projector
-- runtime when a projection version first runs.
