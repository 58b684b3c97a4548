#!/usr/bin/env bash
# Set up this checkout if needed, then run the server:
#   ./scripts/serve.sh --host 127.0.0.1 --port 8000 [--workers N]
# Configuration comes from VOXGATE_* environment variables (python/voxgate/settings.py).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh >&2
exec .venv/bin/voxgate serve "$@"
