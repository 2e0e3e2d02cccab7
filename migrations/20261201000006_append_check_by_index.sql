-- strata_append (see 20261123000005_append_function.sql and
-- docs/adr/0006-one-round-trip-appends.md), unchanged but for the version
-- check: it looked the streams up with a join, which the function's
-- generic plan, made once per session, turned into a full scan of
-- strata_streams whenever the session first ran it against a small table.
-- Same signature and result, so running writers keep working.
CREATE OR REPLACE FUNCTION strata_append(
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

    -- One index look-up per stream. (A join here gets a generic plan made
    -- when the function is first called in a session; on a new, small
    -- strata_streams that plan is a hash join over a full scan, and the
    -- writer's session would keep scanning the whole table on every append
    -- as it grows.)
    IF EXISTS (
        SELECT 1
          FROM unnest(check_ids, check_versions) AS c(stream_id, version)
         WHERE coalesce((SELECT s.version FROM strata_streams s
                          WHERE s.stream_id = c.stream_id), 0) <> c.version
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
