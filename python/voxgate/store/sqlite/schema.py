"""The embedded store's schema: ``MIGRATIONS[i]`` brings ``user_version`` i to i + 1."""

from __future__ import annotations

# MIGRATIONS[i] brings the schema from ``user_version`` i to i + 1.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE sessions (
            id TEXT PRIMARY KEY NOT NULL,
            state TEXT NOT NULL,
            codec TEXT,
            sample_rate INTEGER,
            channels INTEGER,
            metadata TEXT NOT NULL DEFAULT '{}',
            created_at INTEGER NOT NULL,           -- microseconds since the epoch, UTC
            updated_at INTEGER NOT NULL,
            next_seq INTEGER NOT NULL DEFAULT 0,   -- one past the highest stored seq
            frames INTEGER NOT NULL DEFAULT 0,
            bytes INTEGER NOT NULL DEFAULT 0,
            end_seq INTEGER,
            stream_crc32c INTEGER,
            stream_generation INTEGER NOT NULL DEFAULT 0,
            -- Every seq below prefix_seq is stored, prefix_seq itself is not;
            -- prefix_crc32c is the CRC-32C of their payloads in seq order.
            prefix_seq INTEGER NOT NULL DEFAULT 0,
            prefix_crc32c INTEGER NOT NULL DEFAULT 0
        ) WITHOUT ROWID""",
        """CREATE TABLE segments (
            id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, so ids name one file forever
            name TEXT NOT NULL UNIQUE,             -- file name under segments/
            sealed INTEGER NOT NULL DEFAULT 0,     -- 1: nothing will be appended any more
            live INTEGER NOT NULL DEFAULT 0,       -- indexed frames stored in it
            end_offset INTEGER NOT NULL DEFAULT 0, -- end of the last committed payload
            pid INTEGER NOT NULL,
            created_at INTEGER NOT NULL
        )""",
        """CREATE TABLE frames (
            session_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            flags INTEGER NOT NULL,
            pts_us INTEGER NOT NULL,               -- u64 stored as two's-complement i64
            length INTEGER NOT NULL,
            crc32c INTEGER NOT NULL,
            segment INTEGER NOT NULL,
            offset INTEGER NOT NULL,
            PRIMARY KEY (session_id, seq)
        ) WITHOUT ROWID""",
        # Byte ranges of deleted frames not yet overwritten with zeros.
        """CREATE TABLE erasures (
            segment INTEGER NOT NULL,
            offset INTEGER NOT NULL,
            length INTEGER NOT NULL
        )""",
    ),
    # 2: transcripts (Store block "transcripts and listeners").
    (
        """CREATE TABLE transcripts (
            session_id TEXT NOT NULL,
            id INTEGER NOT NULL,                   -- per session: 1, 2, 3, ...
            role TEXT NOT NULL,
            seq INTEGER,                           -- the client's utterance number, if given
            is_final INTEGER NOT NULL,
            text TEXT NOT NULL,
            timestamp TEXT NOT NULL,               -- the client's value, JSON-encoded
            supersedes INTEGER,
            received_at INTEGER NOT NULL,          -- microseconds since the epoch, UTC
            PRIMARY KEY (session_id, id)
        ) WITHOUT ROWID""",
        "CREATE INDEX transcripts_by_key ON transcripts (session_id, role, seq, is_final)",
    ),
    # 3: retention: tiers, archive bookkeeping, run records.
    (
        "ALTER TABLE sessions ADD COLUMN tier TEXT NOT NULL DEFAULT 'hot'",
        "ALTER TABLE sessions ADD COLUMN tier_target TEXT",  # a begun move: 'warm' or 'cold'
        "ALTER TABLE sessions ADD COLUMN tier_changed_at INTEGER",
        "ALTER TABLE sessions ADD COLUMN kept_missing TEXT",  # gaps as they were when moved
        "ALTER TABLE sessions ADD COLUMN archive_path TEXT",
        "ALTER TABLE sessions ADD COLUMN archive_bytes INTEGER",
        "ALTER TABLE sessions ADD COLUMN archive_crc32c INTEGER",
        "ALTER TABLE sessions ADD COLUMN archived_at INTEGER",
        "CREATE INDEX sessions_by_tier ON sessions (tier, updated_at)",
        """CREATE TABLE retention_runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            started_at INTEGER NOT NULL,
            finished_at INTEGER NOT NULL,
            outcome TEXT NOT NULL,
            report TEXT NOT NULL                   -- the RetentionRun as JSON
        )""",
    ),
    # 4: webhook outbox (Store block "webhook outbox"; voxgate.webhooks sends it).
    (
        """CREATE TABLE webhook_outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, -- enqueue order: events are claimed by it
            id TEXT NOT NULL UNIQUE,               -- the event id receivers dedupe on
            type TEXT NOT NULL,
            session_id TEXT NOT NULL,
            body BLOB NOT NULL,                    -- the JSON body, fixed when enqueued
            created_at INTEGER NOT NULL,           -- microseconds since the epoch, UTC
            status TEXT NOT NULL DEFAULT 'pending', -- 'pending' or 'failed' (given up)
            attempts INTEGER NOT NULL DEFAULT 0,   -- failed attempts
            -- Pending: when the next attempt is due. A claim moves it to the end of its
            -- lease, so a claimed event is due again only if its claimer never answers.
            due_at INTEGER NOT NULL,
            claim TEXT,                            -- token of the latest claim
            last_error TEXT
        )""",
        "CREATE INDEX webhook_outbox_due ON webhook_outbox (status, due_at)",
    ),
    # 5: tenants (docs/operations.md "Tenants").
    (
        # The API key name that created the session (NULL: created before tenants).
        "ALTER TABLE sessions ADD COLUMN tenant TEXT",
        "CREATE INDEX sessions_by_tenant ON sessions (tenant, id)",
    ),
    # 6: blocks. Frames lie in segments as blocks (header, then each frame's record);
    # the index holds one row per block (in extents, or recent_extents until moved).
    # The rows of ``frames`` are turned into blocks by voxgate.store.sqlite.upgrade,
    # which then drops the table.
    (
        """CREATE TABLE extents (
            session_id TEXT NOT NULL,
            first_seq INTEGER NOT NULL,
            last_seq INTEGER NOT NULL,
            segment INTEGER NOT NULL,
            offset INTEGER NOT NULL,               -- where the block starts in the segment
            length INTEGER NOT NULL,               -- bytes of the block: header and records
            payload_bytes INTEGER NOT NULL,
            crc32c INTEGER NOT NULL,               -- CRC-32C of its payloads in seq order
            PRIMARY KEY (session_id, first_seq)
        ) WITHOUT ROWID""",
        # The extents of the latest commits, in commit order. A commit appends its
        # rows here (a page or two, where inserting into ``extents`` touches one
        # page per session) and the store moves them into ``extents`` in batches.
        """CREATE TABLE recent_extents (
            session_id TEXT NOT NULL,
            first_seq INTEGER NOT NULL,
            last_seq INTEGER NOT NULL,
            segment INTEGER NOT NULL,
            offset INTEGER NOT NULL,
            length INTEGER NOT NULL,
            payload_bytes INTEGER NOT NULL,
            crc32c INTEGER NOT NULL
        )""",
        # Every extent, wherever it is now: what readers ask.
        """CREATE VIEW all_extents AS
            SELECT session_id, first_seq, last_seq, segment, offset, length, payload_bytes,
                crc32c FROM extents
            UNION ALL
            SELECT session_id, first_seq, last_seq, segment, offset, length, payload_bytes,
                crc32c FROM recent_extents""",
    ),
)
