#!/usr/bin/env bash
# DuckDB (from PyPI) for crates/cli/tests/lambda.rs, which reads the Parquet archive with
# `read_parquet('ROOT/**/*.parquet', hive_partitioning=true)` as a warehouse would. Installed
# into a venv under target/ so nothing outside the build directory changes. Idempotent: does
# nothing when the venv already imports duckdb.
set -euo pipefail
cd "$(dirname "$0")/../.."

venv="${CARGO_TARGET_DIR:-target}/duckdb-venv"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import duckdb' >/dev/null 2>&1; then
  echo "services.d/duckdb.sh: duckdb is installed in $venv"
  exit 0
fi

if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then
      sudo=(sudo)
    fi
    echo "services.d/duckdb.sh: installing python3-venv (apt-get)"
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends python3 python3-venv
  fi
fi

mkdir -p "$(dirname "$venv")"
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check duckdb
"$venv/bin/python" -c 'import duckdb; print("services.d/duckdb.sh: duckdb", duckdb.__version__, "in '"$venv"'")'
