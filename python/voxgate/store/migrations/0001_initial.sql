-- voxgate PostgreSQL schema, version 1: sessions and frames with their payloads.
-- Session ids sort bytewise (COLLATE "C"), as the API pages them.

CREATE TABLE sessions (
    id text COLLATE "C" PRIMARY KEY,
    state text NOT NULL CHECK (state IN ('open', 'ended', 'complete', 'deleted')),
    codec text,
    sample_rate integer,
    channels integer,
    -- json, not jsonb: kept exactly as given (key order, any string), like the embedded store.
    metadata json NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    next_seq bigint NOT NULL DEFAULT 0,          -- one past the highest stored seq
    frames bigint NOT NULL DEFAULT 0,
    bytes bigint NOT NULL DEFAULT 0,
    end_seq bigint,
    stream_crc32c bigint,
    stream_generation bigint NOT NULL DEFAULT 0,
    -- Every seq below prefix_seq is stored, prefix_seq itself is not;
    -- prefix_crc32c is the CRC-32C of their payloads in seq order.
    prefix_seq bigint NOT NULL DEFAULT 0,
    prefix_crc32c bigint NOT NULL DEFAULT 0
);

-- Frames are written only by a transaction holding their session's row lock,
-- which checks the session first: no foreign key, so inserts skip its check.
CREATE TABLE frames (
    session_id text COLLATE "C" NOT NULL,
    seq bigint NOT NULL,
    flags integer NOT NULL,
    pts_us bigint NOT NULL,                      -- u64 stored as two's-complement int8
    length integer NOT NULL,
    crc32c bigint NOT NULL,
    payload bytea NOT NULL,
    PRIMARY KEY (session_id, seq)
);

-- Audio does not compress: store large payloads out of line as they are,
-- without spending CPU on a compression attempt.
ALTER TABLE frames ALTER COLUMN payload SET STORAGE EXTERNAL;
