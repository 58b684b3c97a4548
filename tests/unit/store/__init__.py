"""Store tests: one suite for every backend, plus the embedded store's own."""
