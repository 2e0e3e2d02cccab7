-- The event store. See docs/adr/0001-gap-safe-global-order.md for why
-- positions are assigned under the lock on strata_head.

-- Every event, in one dense global order (position 1, 2, 3, ...).
CREATE TABLE strata_events (
    position        BIGINT      PRIMARY KEY,
    event_id        UUID        NOT NULL,
    stream_id       TEXT        NOT NULL,
    stream_type     TEXT        NOT NULL,
    stream_version  BIGINT      NOT NULL,
    event_type      TEXT        NOT NULL,
    schema_version  INTEGER     NOT NULL,
    payload         JSONB       NOT NULL,
    metadata        JSONB       NOT NULL,
    recorded_at     TIMESTAMPTZ NOT NULL,
    CONSTRAINT strata_events_event_id_key UNIQUE (event_id),
    CONSTRAINT strata_events_stream_version_key UNIQUE (stream_id, stream_version),
    CONSTRAINT strata_events_position_positive CHECK (position > 0),
    CONSTRAINT strata_events_version_positive CHECK (stream_version > 0)
);

-- One row per stream: its type and current version.
CREATE TABLE strata_streams (
    stream_id   TEXT   PRIMARY KEY,
    stream_type TEXT   NOT NULL,
    version     BIGINT NOT NULL
);

-- The head of the global order. Appenders lock this row (SELECT ... FOR
-- UPDATE) before assigning positions and keep the lock until commit, so
-- positions become visible strictly in order.
CREATE TABLE strata_head (
    id       SMALLINT PRIMARY KEY CHECK (id = 1),
    position BIGINT   NOT NULL
) WITH (fillfactor = 50);
INSERT INTO strata_head (id, position) VALUES (1, 0);
