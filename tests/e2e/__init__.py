"""End-to-end tests: real ``voxgate serve`` processes driven over the wire."""
