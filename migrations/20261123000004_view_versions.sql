-- Which physical version of each view queries read, and which one a
-- rebuild is filling. See docs/adr/0005-online-rebuilds.md.
CREATE TABLE strata_view_versions (
    name               TEXT        PRIMARY KEY,
    active_version     INTEGER     NOT NULL,
    rebuilding_version INTEGER,
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);
