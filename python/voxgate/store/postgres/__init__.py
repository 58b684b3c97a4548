"""The PostgreSQL store: sessions, blocks and transcripts in one database every instance shares.

Schema: ``voxgate/store/migrations/``. Frames are stored as blocks, the same
self-describing bytes the embedded store writes into its segments: one row of
``blocks`` (``bytea``, stored out of line and uncompressed: audio does not
compress) per run of consecutive seqs of one session stored by one commit,
not one row per frame. Any number of voxgate processes and instances may use
one database.

PostgreSQL's commit, with ``synchronous_commit`` left on, is the durability
point for both ``VOXGATE_DURABILITY`` levels: it survives a killed voxgate
process and, with the server's ``fsync`` on, power loss. Every failure to
reach or use the database becomes :class:`~voxgate.store.base.StoreError`. A
connection found broken (PostgreSQL restarted) is retried once on a fresh
connection after expiring the pool's other connections, so the pool recovers
by itself once the server is back.

The parts: ``plumbing`` (pool, migrations on open, retries), ``frames``
(commits and reads, see there), ``sessions``, ``retention``, ``transcripts``,
``events`` (webhook outbox), ``store`` (the class).
"""

from voxgate.store.migrations.data import BLOCK_COLUMNS
from voxgate.store.postgres.common import redact
from voxgate.store.postgres.store import PostgresStore

__all__ = ["BLOCK_COLUMNS", "PostgresStore", "redact"]
