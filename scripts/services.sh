#!/usr/bin/env bash
# Installs what the integration tests need, when it is missing (scripts/test.sh calls this):
#   chromium    headless browser for crates/cli/tests/browser.rs (dashboard, screenshot)
#   prometheus  real Prometheus for crates/cli/tests/prometheus.rs, and promtool (same
#               package) for crates/cli/tests/deploy.rs
#   psql        PostgreSQL's own client, for crates/cli/tests/serving.rs (the pgwire server)
# Debian packages, installed with apt-get. Nothing is started here: each test starts its own
# processes on free loopback ports and stops them. Does nothing (and quickly) when all is there.
# Each connector that needs more (a broker, a database server) adds its own idempotent
# scripts/services.d/<name>.sh, run after this one.
set -euo pipefail
cd "$(dirname "$0")/.."

run_parts() {
  for part in scripts/services.d/*.sh; do
    [ -e "$part" ] || continue
    echo "services.sh: $part"
    bash "$part"
  done
}

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  need+=(prometheus)
fi
command -v psql >/dev/null 2>&1 || need+=(postgresql-client)
# any font, so that the dashboard screenshot has readable text
if ! { command -v fc-list >/dev/null 2>&1 && [ -n "$(fc-list 2>/dev/null | head -n 1)" ]; }; then
  need+=(fonts-dejavu-core)
fi

if [ ${#need[@]} -eq 0 ]; then
  echo "services.sh: chromium, prometheus, promtool and psql are installed"
  run_parts
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "services.sh: missing ${need[*]} and no apt-get to install them with (Debian expected)" >&2
  exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  sudo=(sudo)
fi

echo "services.sh: installing ${need[*]} (apt-get)"
# Keep package scripts from starting daemons (the prometheus package would start a server
# on :9090): the tests start their own. A policy-rc.d already in place is left alone.
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
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -qq --no-install-recommends "${need[@]}"

for tool in chromium prometheus promtool psql; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "services.sh: $tool is still missing after the install" >&2
    exit 1
  fi
done
echo "services.sh: installed ${need[*]}"
run_parts
