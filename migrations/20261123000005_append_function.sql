-- The one-round-trip append (see docs/adr/0006-one-round-trip-appends.md).
--
-- The writer decides every append of a group in Rust, assuming each stream
-- is at the version its first append expects, and calls this function in
-- autocommit mode: one round trip, one transaction. The function takes the
-- append lock (the strata_head row, held until commit, as in ADR 0001),
-- then checks the assumption. If any stream is not at the assumed version
-- it writes nothing and returns NULL, and the writer falls back to the
-- locked read-decide-write transaction. Event ids already stored fail the
-- unique constraint, which rolls everything back; the writer falls back too.
--
-- Arguments are evaluated before the body runs, so the caller's
-- `text[]::jsonb[]` casts parse payloads before the lock is taken.
CREATE FUNCTION strata_append(
    event_ids       uuid[],
    stream_ids      text[],
    stream_types    text[],
    versions        bigint[],
    event_types     text[],
    schema_versions int[],
    payloads        jsonb[],
    metadata        jsonb[],
    recorded_at     timestamptz[],
    check_ids       text[],
    check_versions  bigint[],
    s_ids           text[],
    s_types         text[],
    s_versions      bigint[],
    channel         text
) RETURNS bigint
LANGUAGE plpgsql VOLATILE
-- Plan each statement once per session: the writer's connection forces
-- custom plans for its other queries, which would re-plan all of these on
-- every call.
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    n    bigint := coalesce(cardinality(event_ids), 0);
    base bigint;
BEGIN
    -- The append lock. Every statement after it takes a fresh snapshot
    -- (READ COMMITTED, volatile function), so it sees every append that
    -- committed before the lock was granted.
    SELECT position INTO base FROM strata_head WHERE id = 1 FOR UPDATE;

    IF EXISTS (
        SELECT 1
          FROM unnest(check_ids, check_versions) AS c(stream_id, version)
          LEFT JOIN strata_streams s ON s.stream_id = c.stream_id
         WHERE coalesce(s.version, 0) <> c.version
    ) THEN
        RETURN NULL;
    END IF;

    IF n = 0 THEN
        RETURN base;
    END IF;

    INSERT INTO strata_events (position, event_id, stream_id, stream_type, stream_version,
                               event_type, schema_version, payload, metadata, recorded_at)
    SELECT base + t.o, t.e, t.s, t.st, t.v, t.et, t.sv, t.pl, t.md,
           coalesce(t.ra, clock_timestamp())
      FROM unnest(event_ids, stream_ids, stream_types, versions, event_types,
                  schema_versions, payloads, metadata, recorded_at)
           WITH ORDINALITY AS t(e, s, st, v, et, sv, pl, md, ra, o);

    INSERT INTO strata_streams (stream_id, stream_type, version)
    SELECT * FROM unnest(s_ids, s_types, s_versions)
        ON CONFLICT (stream_id) DO UPDATE SET version = EXCLUDED.version;

    UPDATE strata_head SET position = base + n WHERE id = 1;
    PERFORM pg_notify(channel, (base + n)::text);
    RETURN base;
END
$$;
