"""Retention: hot, warm and cold tiers, the runner, archives, backups of the embedded store."""
