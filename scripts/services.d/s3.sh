#!/usr/bin/env bash
# An S3-compatible server for the shared checkpoint store test (crates/cli/tests/kafka_group.rs):
# moto's server mode (moto[server] from PyPI) in a virtualenv under target/moto-venv. Nothing is
# started here: the test starts `moto_server` on a free loopback port and stops it.
# Idempotent: does nothing when the server is installed.
set -euo pipefail
cd "$(dirname "$0")/../.."

venv="${CARGO_TARGET_DIR:-target}/moto-venv"
if [ -x "$venv/bin/moto_server" ]; then
  echo "services.d/s3.sh: moto_server is in $venv/bin"
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==5.1.*"
test -x "$venv/bin/moto_server"
echo "services.d/s3.sh: moto_server installed in $venv/bin"
