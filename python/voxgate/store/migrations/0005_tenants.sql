-- voxgate PostgreSQL schema, version 5: the API key (tenant) that created each session.

-- NULL: created before keys had names; only admin keys see such sessions.
ALTER TABLE sessions ADD COLUMN tenant text;

CREATE INDEX sessions_by_tenant ON sessions (tenant, id);
