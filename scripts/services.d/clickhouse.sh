#!/usr/bin/env bash
# ClickHouse for crates/stores (the ClickHouse sink's tests). Only the binaries are needed:
# each test starts its own `clickhouse server` on free loopback ports with a temporary config
# and data directory, and stops it. Idempotent: does nothing when the binary is there.
set -euo pipefail

have_clickhouse() {
  command -v clickhouse >/dev/null 2>&1 || command -v clickhouse-server >/dev/null 2>&1
}

if have_clickhouse; then
  echo "services.d/clickhouse.sh: clickhouse is installed"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "services.d/clickhouse.sh: ******** clickhouse is missing and there is no apt-get to" >&2
  echo "services.d/clickhouse.sh: ******** install it with: the ClickHouse sink tests will FAIL" >&2
  exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  sudo=(sudo)
fi

# The package's scripts would start a system daemon on :8123/:9000; the tests start their own.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
  "${sudo[@]}" chmod 755 "$policy"
  made_policy=1
fi
cleanup() {
  if [ "$made_policy" -eq 1 ]; then
    "${sudo[@]}" rm -f "$policy"
  fi
}
trap cleanup EXIT

"${sudo[@]}" apt-get update -qq
if ! apt-cache show clickhouse-server >/dev/null 2>&1; then
  echo "services.d/clickhouse.sh: ******** the Debian package clickhouse-server is not available" >&2
  echo "services.d/clickhouse.sh: ******** from this machine's apt sources (apt-cache show failed):" >&2
  echo "services.d/clickhouse.sh: ******** the ClickHouse sink tests will FAIL" >&2
  exit 1
fi
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -qq --no-install-recommends clickhouse-server clickhouse-client
if ! have_clickhouse; then
  echo "services.d/clickhouse.sh: ******** clickhouse-server installed but no clickhouse binary on PATH" >&2
  exit 1
fi
echo "services.d/clickhouse.sh: installed $(dpkg-query -W -f='${Version}' clickhouse-server)"
