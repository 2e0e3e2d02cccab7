-- strata_append_catch_up: strata_append_current (20261201000007), and for
-- every stream it found moved, the events the caller has not seen, read
-- under the same append lock.
--
-- A writer whose cached state of a stream is behind (another process
-- appended) gets a conflict, and its command handler then read the events
-- it missed before deciding again: a statement and a round trip per
-- conflict. The shop's command API and process manager both write stock,
-- so at 1,000 commands/s Postgres ran about 1,200 such reads a second. This
-- function returns those events with the conflict: after each moved
-- stream's assumed version, in version order, at most 64 per stream (a
-- stream that moved further is read by the caller as before). The caller
-- checks that they follow its state without a gap before using them.
-- Otherwise it is strata_append_current's body, which moves here: this
-- build's writers call this function directly (a call through another
-- would cost every append a nested statement), and strata_append_current,
-- at the end of this file, becomes a call of it for earlier builds.
CREATE OR REPLACE FUNCTION strata_append_catch_up(
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
    lock_budget     text,
    -- As strata_append_current.
    OUT base             bigint,
    OUT moved_ids        text[],
    OUT moved_versions   bigint[],
    OUT stored_ids       uuid[],
    OUT stored_streams   text[],
    OUT stored_versions  bigint[],
    OUT stored_positions bigint[],
    -- The moved streams' events after the assumed versions, ordered by
    -- stream and version, one array a column.
    OUT missed_streams   text[],
    OUT missed_ids       uuid[],
    OUT missed_versions  bigint[],
    OUT missed_positions bigint[],
    OUT missed_types     text[],
    OUT missed_schemas   int[],
    OUT missed_payloads  text[]
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
        missed_streams := '{}';
        missed_ids := '{}';
        missed_versions := '{}';
        missed_positions := '{}';
        missed_types := '{}';
        missed_schemas := '{}';
        missed_payloads := '{}';
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

        -- The moved streams' events after the assumed versions: one index
        -- range scan per moved stream (stream_id, stream_version).
        SELECT coalesce(array_agg(m.stream_id ORDER BY m.stream_id, m.stream_version), '{}'),
               coalesce(array_agg(m.event_id ORDER BY m.stream_id, m.stream_version), '{}'),
               coalesce(array_agg(m.stream_version ORDER BY m.stream_id, m.stream_version), '{}'),
               coalesce(array_agg(m.position ORDER BY m.stream_id, m.stream_version), '{}'),
               coalesce(array_agg(m.event_type ORDER BY m.stream_id, m.stream_version), '{}'),
               coalesce(array_agg(m.schema_version ORDER BY m.stream_id, m.stream_version), '{}'),
               coalesce(array_agg(m.payload ORDER BY m.stream_id, m.stream_version), '{}')
          INTO missed_streams, missed_ids, missed_versions, missed_positions, missed_types,
               missed_schemas, missed_payloads
          FROM unnest(check_ids, check_versions) AS u(stream_id, version)
          CROSS JOIN LATERAL (
                SELECT ev.stream_id, ev.event_id, ev.stream_version, ev.position, ev.event_type,
                       ev.schema_version, ev.payload::text AS payload
                  FROM strata_events ev
                 WHERE ev.stream_id = u.stream_id AND ev.stream_version > u.version
                 ORDER BY ev.stream_version
                 LIMIT 64) AS m
         WHERE u.stream_id = ANY (moved_ids);

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

-- strata_append_current stays for writers of earlier builds (a rolling
-- deploy runs both), and now answers from strata_append_catch_up, so the
-- append's statements live in one function: same arguments, same result,
-- the missed events left out.
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
    lock_budget     text,
    OUT base             bigint,
    OUT moved_ids        text[],
    OUT moved_versions   bigint[],
    OUT stored_ids       uuid[],
    OUT stored_streams   text[],
    OUT stored_versions  bigint[],
    OUT stored_positions bigint[]
)
LANGUAGE sql VOLATILE
AS $$
    SELECT a.base, a.moved_ids, a.moved_versions, a.stored_ids, a.stored_streams,
           a.stored_versions, a.stored_positions
      FROM strata_append_catch_up(event_ids, stream_ids, stream_types, versions, event_types,
                                  schema_versions, payloads, metadata, recorded_at,
                                  check_ids, check_versions, s_ids, s_types, s_versions,
                                  channel, lock_budget) AS a
$$;
