#!/usr/bin/env bash
# Runs tollgate's whole test suite. On a fresh machine with only the Rust
# toolchain and Python 3 this is enough: everything the tests need is built
# or installed from here.
set -euo pipefail
cd "$(dirname "$0")/.."

# The Redis and PostgreSQL tests start their own servers on ephemeral ports.
scripts/ensure-redis.sh
scripts/ensure-postgres.sh

# Rust: unit tests, integration tests (real servers on 127.0.0.1:0), doc tests.
cargo test --locked

# Envoy compatibility, through Envoy's official generated stubs (xds-protos)
# against the real binary.
cargo build --locked --bin tollgate
export TOLLGATE_BIN="${CARGO_TARGET_DIR:-target}/debug/tollgate"
scripts/python-env.sh
.venv/bin/python -m pytest -q tests/envoy
# The HTTP API: schemathesis against /openapi.yaml, real JWTs, /metrics
# through the official Prometheus parser.
.venv/bin/python -m pytest -q tests/http

# The Python client example (examples/python) against the real binary, with
# stubs generated from proto/ at test time.
.venv/bin/python -m pytest -q tests/python_client
