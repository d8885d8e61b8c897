#!/usr/bin/env bash
# Runs every test of the workspace on a fresh machine: installs what the tests need,
# starts the services they talk to, then runs the suite with cargo-nextest.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo-nextest >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi

# Services used by integration tests are started here as they are added
# (see scripts/services.sh); the core engine's tests need none.
if [ -x scripts/services.sh ]; then
  scripts/services.sh
fi

# The `ci` profile (Cargo.toml): optimised, since the end-to-end tests drive the real binary
# over hundreds of thousands of events, but without the release profile's LTO.
cargo nextest run --workspace --cargo-profile ci --no-fail-fast "$@"
