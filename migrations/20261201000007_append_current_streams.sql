-- strata_append_current: the one-call group append of ADR 0006, that
-- writes the appends of the streams that are where the group assumed and
-- reports the others instead of writing nothing.
--
-- strata_append (20261201000006) returns NULL when one stream of the group
-- has moved, and the writer then read the versions and called again: three
-- statements, two of them under the append lock, for a group that had one
-- stale append. Processes that write the same streams (the shop's command
-- API and process manager both write stock) met that on a third of their
-- groups. This function writes every append whose stream is where it was
-- assumed, at dense positions `base + 1 ..` in the group's order, skips the
-- rows of the moved streams, and returns those streams with their versions
-- (and which of their appends' ids are stored already), which the writer
-- answers as conflicts (or, for a retried append, duplicates). strata_append stays for writers
-- of earlier builds.
CREATE OR REPLACE FUNCTION strata_append_current(
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
    channel         text,
    -- The longest wait for the append lock, as a lock_timeout setting
    -- ('250ms', or milliseconds as text): what is left of the group's
    -- budget.
    lock_budget     text,
    -- The head before the group's events: the first is at base + 1.
    OUT base           bigint,
    -- The streams that were not at their assumed version, none written.
    OUT moved_ids      text[],
    -- Their versions, in the same order.
    OUT moved_versions bigint[],
    -- The event ids of the moved streams' appends that are stored already
    -- (a retried append is a duplicate, not a conflict), with where each
    -- is stored.
    OUT stored_ids       uuid[],
    OUT stored_streams   text[],
    OUT stored_versions  bigint[],
    OUT stored_positions bigint[]
)
LANGUAGE plpgsql VOLATILE
-- Plan each statement once per session (see strata_append).
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    n bigint;
BEGIN
    -- Local to the call's transaction.
    PERFORM set_config('lock_timeout', lock_budget, true);

    -- The append lock. Every statement after it takes a fresh snapshot
    -- (READ COMMITTED, volatile function), so it sees every append that
    -- committed before the lock was granted.
    SELECT position INTO base FROM strata_head WHERE id = 1 FOR UPDATE;

    -- One index look-up per stream (a join would get a generic plan that
    -- scans the whole table; see 20261201000006).
    SELECT coalesce(array_agg(c.stream_id), '{}'), coalesce(array_agg(c.actual), '{}')
      INTO moved_ids, moved_versions
      FROM (SELECT u.stream_id, u.version,
                   coalesce((SELECT s.version FROM strata_streams s
                              WHERE s.stream_id = u.stream_id), 0) AS actual
              FROM unnest(check_ids, check_versions) AS u(stream_id, version)) AS c
     WHERE c.actual <> c.version;

    IF cardinality(moved_ids) = 0 THEN
        -- The usual case: every stream where assumed, every row written.
        stored_ids := '{}';
        stored_streams := '{}';
        stored_versions := '{}';
        stored_positions := '{}';
        n := coalesce(cardinality(event_ids), 0);
        IF n = 0 THEN
            RETURN;
        END IF;
        INSERT INTO strata_events (position, event_id, stream_id, stream_type, stream_version,
                                   event_type, schema_version, payload, metadata, recorded_at)
        SELECT base + t.o, t.e, t.s, t.st, t.v, t.et, t.sv, t.pl, t.md,
               coalesce(t.ra, clock_timestamp())
          FROM unnest(event_ids, stream_ids, stream_types, versions, event_types,
                      schema_versions, payloads, metadata, recorded_at)
               WITH ORDINALITY AS t(e, s, st, v, et, sv, pl, md, ra, o);
    ELSE
        -- One index look-up per id (a scalar subquery: a join could get a
        -- generic plan that scans the table).
        SELECT coalesce(array_agg((x.r).event_id), '{}'),
               coalesce(array_agg((x.r).stream_id), '{}'),
               coalesce(array_agg((x.r).stream_version), '{}'),
               coalesce(array_agg((x.r).position), '{}')
          INTO stored_ids, stored_streams, stored_versions, stored_positions
          FROM (SELECT (SELECT ev FROM strata_events ev WHERE ev.event_id = t.e) AS r
                  FROM unnest(event_ids, stream_ids) AS t(e, s)
                 WHERE t.s = ANY (moved_ids)
                OFFSET 0) AS x
         WHERE (x.r).event_id IS NOT NULL;

        INSERT INTO strata_events (position, event_id, stream_id, stream_type, stream_version,
                                   event_type, schema_version, payload, metadata, recorded_at)
        SELECT base + row_number() OVER (ORDER BY t.o), t.e, t.s, t.st, t.v, t.et, t.sv,
               t.pl, t.md, coalesce(t.ra, clock_timestamp())
          FROM unnest(event_ids, stream_ids, stream_types, versions, event_types,
                      schema_versions, payloads, metadata, recorded_at)
               WITH ORDINALITY AS t(e, s, st, v, et, sv, pl, md, ra, o)
         WHERE t.s <> ALL (moved_ids);
        GET DIAGNOSTICS n = ROW_COUNT;
        IF n = 0 THEN
            RETURN;
        END IF;
    END IF;

    INSERT INTO strata_streams (stream_id, stream_type, version)
    SELECT u.i, u.t, u.v
      FROM unnest(s_ids, s_types, s_versions) AS u(i, t, v)
     WHERE u.i <> ALL (moved_ids)
        ON CONFLICT (stream_id) DO UPDATE SET version = EXCLUDED.version;

    UPDATE strata_head SET position = base + n WHERE id = 1;
    PERFORM pg_notify(channel, (base + n)::text);
END
$$;
