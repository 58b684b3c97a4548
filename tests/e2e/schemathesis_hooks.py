"""Schemathesis hooks: the raw frame body of ``POST /v1/sessions/{id}/frames`` goes as bytes."""

from __future__ import annotations

import schemathesis

schemathesis.serializer.alias("application/vnd.voxgate.frames", "application/octet-stream")
