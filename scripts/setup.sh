#!/usr/bin/env bash
# Prepare this checkout for running and testing voxgate, on a fresh Debian
# machine as root or on one already set up (every step is skipped when done).
#
#   1. system packages from Debian: Redis, PostgreSQL, Chromium and Node.js for the tests
#   2. rustfmt and clippy for the Rust toolchain that rustup manages
#   3. the virtualenv .venv: every Python package at the exact version and hash
#      pinned in requirements/dev.lock, then voxgate itself, editable, Rust extension built
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"

step() { printf '\n==> setup: %s\n' "$*"; }
die() { printf '\nsetup FAILED: %s\n' "$*" >&2; exit 1; }

# --- 1. System packages -------------------------------------------------------
# Debian packages the project needs (services such as redis-server or postgresql
# go here; chromium runs the browser SDK tests, driven by Playwright, which never
# downloads a browser of its own; openssl makes the TLS tests' self-signed
# certificate; nodejs runs the webhook verification snippet of docs/clients.md).
# Only the missing ones are installed, after one `apt-get update`.
APT_PACKAGES=(redis-server postgresql chromium openssl nodejs)

apt_updated=0
apt_install() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    step "apt-get install ${missing[*]}"
    if ((!apt_updated)); then
        apt-get update -q
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

step "system packages"
if ((${#APT_PACKAGES[@]})); then
    apt_install "${APT_PACKAGES[@]}"
fi
# Debian's own python3 needs python3-venv to create a virtualenv.
if [[ ! -x "$VENV/bin/python" ]] && ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
    apt_install python3-venv
fi

# --- 2. Rust toolchain components ---------------------------------------------
step "Rust toolchain: $(cargo --version 2>/dev/null || echo 'cargo not found')"
command -v cargo >/dev/null || die "cargo not found (the machine's toolchain comes from rustup)"
installed_components="$(rustup component list --installed 2>/dev/null || true)"
for component in rustfmt clippy; do
    if ! grep -q "^$component" <<<"$installed_components"; then
        step "rustup component add $component"
        rustup component add "$component"
    fi
done

# --- 3. Python virtualenv with voxgate ----------------------------------------
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$PYTHON is $("$PYTHON" --version 2>&1); voxgate needs Python 3.11 or newer"

if [[ ! -x "$VENV/bin/python" ]]; then
    step "create $VENV with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi

# Reinstall only when what the build depends on changed: the project metadata,
# the lock files, the Rust sources, or the interpreter.
build_inputs_hash() {
    {
        "$VENV/bin/python" --version 2>&1
        find pyproject.toml Cargo.toml Cargo.lock requirements rust -type f -print0 2>/dev/null \
            | sort -z | xargs -0 -r sha256sum
    } | sha256sum | cut -d' ' -f1
}
STAMP="$VENV/.voxgate-installed"
want="$(build_inputs_hash)"
native_imports() { "$VENV/bin/python" -c 'import voxgate._native' 2>/dev/null; }

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]] && native_imports; then
    step "voxgate already installed in .venv (build inputs unchanged)"
else
    step "pip install --require-hashes -r requirements/dev.lock (pinned dependencies)"
    "$VENV/bin/python" -m pip install -q "pip==26.3" || die "pip upgrade in .venv failed"
    "$VENV/bin/python" -m pip install -q --require-hashes -r requirements/dev.lock \
        || die "pip install -r requirements/dev.lock failed (see the output above)"
    step "pip install -e . (builds the Rust extension voxgate._native with the pinned maturin)"
    "$VENV/bin/python" -m pip install --no-deps --no-build-isolation -e . \
        || die "pip install -e . failed (see the build output above)"
    "$VENV/bin/python" -m pip check || die "installed packages do not fit together (pip check)"
    if ! native_imports; then
        step "voxgate._native did not import after pip; building it with maturin develop --release"
        VIRTUAL_ENV="$VENV" "$VENV/bin/maturin" develop --release \
            || die "maturin develop --release failed"
    fi
    native_imports || {
        "$VENV/bin/python" -c 'import voxgate._native' || true
        die "voxgate._native does not import after building it"
    }
    echo "$want" >"$STAMP"
fi

step "ready: $("$VENV/bin/python" --version), voxgate._native imports"
