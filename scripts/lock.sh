#!/usr/bin/env bash
# Regenerate the pinned, hashed lock files in requirements/ from pyproject.toml.
# CI, scripts/setup.sh and the Dockerfile install only from these files, so what
# was tested is what ships. Run after changing a dependency, then commit the result:
#   ./scripts/lock.sh            # keep current pins where pyproject.toml still allows them
#   ./scripts/lock.sh --upgrade  # move every pin to the newest allowed release
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
UV=(.venv/bin/uv)
[[ -x .venv/bin/uv ]] || UV=(uv)
compile() {
    local out="$1"; shift
    "${UV[@]}" pip compile --quiet --generate-hashes --python-version 3.11 \
        --python-platform x86_64-manylinux_2_28 --no-header --annotation-style line \
        "$@" -o "$out"
}
# What the server needs at run time (the Docker image installs this).
compile requirements/runtime.lock "$@" pyproject.toml
# Runtime plus everything the tests, linters and benchmarks use (setup.sh installs this).
compile requirements/dev.lock "$@" --extra dev pyproject.toml
# The build backend, for building the wheel without build isolation.
printf 'maturin>=1.7,<2\n' | compile requirements/build.lock "$@" -
