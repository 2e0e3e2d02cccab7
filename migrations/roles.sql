-- Least-privilege access for the shop's services. Not a migration: sqlx's
-- migrator ignores this file (its name has no version). Why each grant is
-- here: docs/deployment-security.md, "Database roles".
--
-- Two roles:
--
--   the owner    owns the database and the schema, and applies migrations
--                (`ecommerce migrate`): all the DDL.
--   the service  what command-api, query-api, relay, projector,
--                process-manager and admin log in as (with --no-migrate):
--                reads and writes rows, never changes the schema in public,
--                never updates or deletes an event. It creates the view
--                tables (one per view version, at run time) in a schema of
--                their own, `strata_views`, and owns them.
--
-- Create the service role first, without putting its password in a
-- statement the server could log:
--
--     createuser --login --pwprompt shop_service
--
-- then, after every `ecommerce migrate`, run this file in the shop's
-- database as its owner, who must also be allowed to administer the
-- service role (a superuser, or a role with CREATEROLE that is a member of
-- the service role):
--
--     psql "$OWNER_DATABASE_URL" -v ON_ERROR_STOP=1 \
--          -v service_role=shop_service -f migrations/roles.sql
--
-- It is idempotent and converges: it revokes what the service role had in
-- public and grants exactly what follows.

-- Only the roles named here may connect; nobody may create temporary tables.
REVOKE ALL ON DATABASE :"DBNAME" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"DBNAME" TO :"service_role";

-- Nobody but the owner creates objects in public (PostgreSQL 15's default;
-- explicit for older servers).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
REVOKE ALL ON SCHEMA public FROM :"service_role";
GRANT USAGE ON SCHEMA public TO :"service_role";
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM :"service_role";
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM :"service_role";

-- The event log is append-only for the services.
GRANT SELECT, INSERT ON strata_events TO :"service_role";
GRANT SELECT, INSERT, UPDATE ON strata_streams TO :"service_role";
-- The append lock is `SELECT ... FOR UPDATE` on the head row.
GRANT SELECT, UPDATE ON strata_head TO :"service_role";
REVOKE ALL ON FUNCTION strata_append FROM PUBLIC;
GRANT EXECUTE ON FUNCTION strata_append TO :"service_role";
REVOKE ALL ON FUNCTION strata_append_current FROM PUBLIC;
GRANT EXECUTE ON FUNCTION strata_append_current TO :"service_role";
REVOKE ALL ON FUNCTION strata_append_catch_up FROM PUBLIC;
GRANT EXECUTE ON FUNCTION strata_append_catch_up TO :"service_role";
GRANT SELECT, INSERT, UPDATE ON strata_snapshots TO :"service_role";

-- Projections and process managers: checkpoints (deleted when an old view
-- version is dropped), dead letters, which view version is active.
GRANT SELECT, INSERT, UPDATE, DELETE ON strata_checkpoints TO :"service_role";
GRANT SELECT, INSERT, UPDATE ON strata_dead_letters TO :"service_role";
GRANT USAGE ON SEQUENCE strata_dead_letters_id_seq TO :"service_role";
GRANT SELECT, INSERT, UPDATE ON strata_view_versions TO :"service_role";

-- `--no-migrate` checks that the schema is up to date.
GRANT SELECT ON _sqlx_migrations TO :"service_role";

-- View tables (`strata_view_<name>_v<version>`) are created when a view
-- version first runs and dropped when a rebuild retires one: the service
-- may create tables here and nowhere else. The framework names them
-- unqualified, so the service role's search_path puts this schema first.
CREATE SCHEMA IF NOT EXISTS strata_views;
REVOKE ALL ON SCHEMA strata_views FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA strata_views TO :"service_role";
ALTER ROLE :"service_role" IN DATABASE :"DBNAME" SET search_path = strata_views, public;

-- View tables an earlier deployment made in public (as the owner) move to
-- strata_views and to the service role; left in public they would be
-- shadowed by empty new tables while their checkpoints say they are full.
SELECT set_config('strata.service_role', :'service_role', false);
DO $$
DECLARE
    t text;
BEGIN
    FOR t IN
        SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relname LIKE 'strata\_view\_%'
           AND c.relname <> 'strata_view_versions'
    LOOP
        EXECUTE format('ALTER TABLE public.%I SET SCHEMA strata_views', t);
        EXECUTE format('ALTER TABLE strata_views.%I OWNER TO %I',
                       t, current_setting('strata.service_role'));
    END LOOP;
END
$$;
