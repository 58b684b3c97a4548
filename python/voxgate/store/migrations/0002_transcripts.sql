-- voxgate PostgreSQL schema, version 2: transcripts (docs/api.md "Transcripts").

-- One row per session that ever had a transcript: the last id handed out. Posting a
-- transcript locks this row, not the session's, so it never waits for (or holds up)
-- an ingest commit; deleting a session locks it too, so no post outlives the delete.
CREATE TABLE transcript_heads (
    session_id text COLLATE "C" PRIMARY KEY,
    last_id bigint NOT NULL
);

CREATE TABLE transcripts (
    session_id text COLLATE "C" NOT NULL,
    id bigint NOT NULL,                          -- per session: 1, 2, 3, ...
    role text NOT NULL,
    seq bigint,                                  -- the client's utterance number, if given
    is_final boolean NOT NULL,
    text text NOT NULL,
    client_timestamp json NOT NULL,              -- the client's value, as given
    supersedes bigint,
    received_at timestamptz NOT NULL,
    PRIMARY KEY (session_id, id)
);

CREATE INDEX transcripts_by_key ON transcripts (session_id, role, seq, is_final);
