#!/usr/bin/env bash
# Set up this checkout if needed, then run every check CI runs, in order,
# stopping at the first one that fails:
#   Rust: cargo fmt --check, cargo clippy -D warnings, cargo test; for the load
#   generator (loadtests/loadgen-rs, a crate of its own): fmt and clippy only
#   Python: ruff check, ruff format --check, mypy --strict, stubtest (_native.pyi),
#           import contract (.importlinter), pytest (unit and end-to-end)
# Arguments go to pytest, e.g. `./scripts/test.sh tests/e2e -k resume`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"
VENV="$ROOT/.venv"

bash scripts/setup.sh

failed() { printf '\ntest.sh FAILED at: %s\n' "$*" >&2; exit 1; }

# check NAME COMMAND...: run one check, stop everything if it fails.
check() {
    local name="$1"; shift
    printf '\n==> check: %s\n    $ %s\n' "$name" "$*"
    local start=$SECONDS
    if "$@"; then
        printf '==> ok: %s (%ds)\n' "$name" "$((SECONDS - start))"
    else
        failed "$name (exit $?)"
    fi
}

# pyo3's build script and the Rust test binaries use the virtualenv's
# interpreter and must find its shared libpython at run time.
export PYO3_PYTHON="$VENV/bin/python"
PY_LIBDIR="$("$PYO3_PYTHON" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR") or "")')"
export LD_LIBRARY_PATH="${PY_LIBDIR}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

check "cargo fmt" cargo fmt --all --check
check "cargo clippy" cargo clippy --all-targets -- -D warnings
check "cargo test" cargo test
# The load generator's own unit tests (`cargo test --manifest-path ...`) are left
# out: building them too would add about 40 s to a cold run.
LOADGEN_MANIFEST=loadtests/loadgen-rs/Cargo.toml
check "cargo fmt (load generator)" cargo fmt --manifest-path "$LOADGEN_MANIFEST" --check
check "cargo clippy (load generator)" \
    cargo clippy --manifest-path "$LOADGEN_MANIFEST" --all-targets --locked -- -D warnings

# Lint only the Python trees that exist (git keeps no empty folders).
ruff_paths=()
for dir in python tests loadtests; do
    [[ -d "$dir" ]] && ruff_paths+=("$dir")
done
check "ruff check" "$VENV/bin/ruff" check "${ruff_paths[@]}"
check "ruff format" "$VENV/bin/ruff" format --check "${ruff_paths[@]}"
check "mypy (package voxgate)" "$VENV/bin/mypy"
check "mypy (tests and load tests)" "$VENV/bin/mypy" --strict tests loadtests
# The hand-written stub of the Rust extension against the extension setup.sh built:
# every name, signature and class in python/voxgate/_native.pyi must match it.
check "stubtest" "$VENV/bin/python" -m mypy.stubtest voxgate._native --mypy-config-file pyproject.toml
# The package's layers and the absence of import cycles (.importlinter).
check "import contract" "$VENV/bin/lint-imports" .importlinter

# pytest exits 5 when it collected no test: a run that tests nothing fails.
pytest_run() {
    local rc=0
    "$VENV/bin/pytest" -q "$@" || rc=$?
    if ((rc == 5)); then
        echo "pytest collected no tests" >&2
    fi
    return "$rc"
}
check "pytest" pytest_run "$@"

printf '\ntest.sh: all checks passed\n'
