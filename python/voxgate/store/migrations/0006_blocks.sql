-- voxgate PostgreSQL schema, version 6: frames stored as blocks.
-- A block is a run of consecutive seqs of one session stored by one commit: a
-- header naming the session and the run, then each frame's record (its 24-byte
-- wire header and payload), the same bytes the embedded store writes into its
-- segment files (rust/block.rs). One row per block instead of one per frame.

CREATE TABLE blocks (
    session_id text COLLATE "C" NOT NULL,
    first_seq bigint NOT NULL,
    last_seq bigint NOT NULL,
    payload_bytes bigint NOT NULL,
    crc32c bigint NOT NULL,                      -- CRC-32C of its payloads in seq order
    data bytea NOT NULL,
    PRIMARY KEY (session_id, first_seq)
);

-- Audio does not compress: store blocks out of line as they are.
ALTER TABLE blocks ALTER COLUMN data SET STORAGE EXTERNAL;

-- The rows of frames become blocks in the same transaction, then frames is
-- dropped: voxgate.store.migrations.data, step 6.
