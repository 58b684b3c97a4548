"""Unit tests, one folder per package of python/voxgate (tests/e2e starts real servers)."""
