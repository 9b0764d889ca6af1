#!/usr/bin/env bash
# Runs tollgate's whole test suite. On a fresh machine with only the Rust
# toolchain this is enough: everything the tests need is built or installed
# from here.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --locked "$@"
