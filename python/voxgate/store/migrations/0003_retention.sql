-- voxgate PostgreSQL schema, version 3: retention tiers, archive bookkeeping, run records.

ALTER TABLE sessions
    ADD COLUMN tier text NOT NULL DEFAULT 'hot' CHECK (tier IN ('hot', 'warm', 'cold')),
    -- A begun move ('warm' or 'cold'): the session takes no frames meanwhile.
    ADD COLUMN tier_target text CHECK (tier_target IN ('warm', 'cold')),
    ADD COLUMN tier_changed_at timestamptz,
    ADD COLUMN kept_missing json,                -- gaps as they were when it left hot
    ADD COLUMN archive_path text,                -- relative to the archive dir
    ADD COLUMN archive_bytes bigint,
    ADD COLUMN archive_crc32c bigint,
    ADD COLUMN archived_at timestamptz;

CREATE INDEX sessions_by_tier ON sessions (tier, updated_at);

CREATE TABLE retention_runs (
    id bigserial PRIMARY KEY,
    started_at timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    outcome text NOT NULL,
    report json NOT NULL                         -- the RetentionRun
);
