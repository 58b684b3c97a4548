# voxgate: multi-stage image.
#   build:   Python 3.11 + the Rust toolchain; builds the voxgate wheel (maturin, through
#            pyproject.toml) with the same command as README.md's "Build a wheel".
#   runtime: python:3.11-slim with the wheel installed, run as an unprivileged user.
#
#   docker build -t voxgate .
#   docker run -p 8000:8000 -e VOXGATE_API_KEYS=change-me voxgate

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG RUST_IMAGE=rust:1.89-slim-bookworm

FROM ${RUST_IMAGE} AS rust

FROM ${PYTHON_IMAGE} AS build
# The Rust toolchain of the official image (rustup layout), and a C linker for it.
COPY --from=rust /usr/local/cargo /usr/local/cargo
COPY --from=rust /usr/local/rustup /usr/local/rustup
ENV CARGO_HOME=/usr/local/cargo \
    RUSTUP_HOME=/usr/local/rustup \
    PATH=/usr/local/cargo/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY requirements ./requirements
# The build backend at the version pinned in requirements/build.lock (no build isolation).
RUN python -m pip install --no-cache-dir --require-hashes -r requirements/build.lock
COPY pyproject.toml Cargo.toml Cargo.lock README.md ./
COPY rust ./rust
COPY python ./python
RUN python -m pip wheel --no-deps --no-build-isolation --wheel-dir dist .

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VOXGATE_DATA_DIR=/var/lib/voxgate/data
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/voxgate --create-home voxgate \
    && mkdir -p /var/lib/voxgate/data /var/lib/voxgate/archive \
    && chown voxgate:voxgate /var/lib/voxgate/data /var/lib/voxgate/archive
# Dependencies exactly as tested (requirements/runtime.lock, hashes checked), then the wheel.
COPY --from=build /src/requirements/runtime.lock /tmp/runtime.lock
COPY --from=build /src/dist/ /tmp/dist/
RUN python -m pip install --no-cache-dir --require-hashes -r /tmp/runtime.lock \
    && python -m pip install --no-cache-dir --no-deps /tmp/dist/*.whl \
    && python -m pip check \
    && rm -rf /tmp/dist /tmp/runtime.lock
USER voxgate
WORKDIR /var/lib/voxgate
VOLUME ["/var/lib/voxgate/data"]
EXPOSE 8000
# Liveness only; a load balancer or orchestrator should route on /ready.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2).status == 200 else 1)"]
# voxgate drains streams on SIGTERM (close 1001) within VOXGATE_SHUTDOWN_GRACE_S.
STOPSIGNAL SIGTERM
CMD ["voxgate", "serve", "--host", "0.0.0.0", "--port", "8000"]
