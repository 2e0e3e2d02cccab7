-- Aggregate snapshots: the latest one per stream.
CREATE TABLE strata_snapshots (
    stream_id      TEXT        PRIMARY KEY,
    stream_type    TEXT        NOT NULL,
    version        BIGINT      NOT NULL,
    position       BIGINT      NOT NULL,
    schema_version INTEGER     NOT NULL,
    state          JSONB       NOT NULL,
    taken_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
