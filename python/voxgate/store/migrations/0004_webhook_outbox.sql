-- voxgate PostgreSQL schema, version 4: the webhook outbox (voxgate.webhooks sends it).

CREATE TABLE webhook_outbox (
    seq bigserial PRIMARY KEY,                   -- enqueue order: events are claimed by it
    id text NOT NULL UNIQUE,                     -- the event id receivers dedupe on
    type text NOT NULL,
    session_id text NOT NULL,
    body bytea NOT NULL,                         -- the JSON body, fixed when enqueued
    created_at timestamptz NOT NULL,
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'failed')),
    attempts integer NOT NULL DEFAULT 0,         -- failed attempts
    -- Pending: when the next attempt is due. A claim moves it to the end of its lease,
    -- so a claimed event is due again only if its claimer never answers.
    due_at timestamptz NOT NULL,
    claim text,                                  -- token of the latest claim
    last_error text
);

CREATE INDEX webhook_outbox_due ON webhook_outbox (due_at, seq) WHERE status = 'pending';
