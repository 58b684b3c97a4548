"""The PostgreSQL store: one class made of its parts."""

from __future__ import annotations

from voxgate.store.postgres.retention import Retention
from voxgate.store.postgres.sessions import Sessions
from voxgate.store.postgres.transcripts import Transcripts


class PostgresStore(Sessions, Retention, Transcripts):
    """A :class:`~voxgate.store.base.Store` in PostgreSQL, reached through an asyncpg pool.

    ``migrate=True`` applies pending migrations when the store opens;
    otherwise opening fails unless the schema is current. ``timeout_s`` bounds
    connecting, waiting for a pooled connection and every statement.
    ``events=True`` enqueues webhook events with the transitions that cause them.
    """
