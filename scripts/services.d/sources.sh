#!/usr/bin/env bash
# What the ingestion sources' tests need (crates/connectors/src/{mysql_cdc,redis,rabbitmq},
# crates/cli/tests/{cdc,redis,rabbitmq}.rs):
#   mariadbd, mariadb-install-db, mariadb  each CDC test starts its own server, binlog on, on a
#                                          free port in a temporary data directory
#   redis-server                           each Redis test starts its own server
#   rabbitmq-server (+ rabbitmqctl)        the broker on 127.0.0.1:5672, guest/guest, which the
#                                          tests share (each on queues of its own)
# Idempotent: installs only what is missing, starts the broker only if nothing listens on 5672.
set -euo pipefail

need=()
if ! command -v mariadbd >/dev/null 2>&1 || ! command -v mariadb-install-db >/dev/null 2>&1; then
  need+=(mariadb-server)
fi
command -v mariadb >/dev/null 2>&1 || need+=(mariadb-client)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v rabbitmqctl >/dev/null 2>&1 || need+=(rabbitmq-server)

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  sudo=(sudo)
fi

if [ ${#need[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "services.d/sources.sh: missing ${need[*]} and no apt-get to install them with" >&2
    exit 1
  fi
  echo "services.d/sources.sh: installing ${need[*]} (apt-get)"
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

listening() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

if ! listening 5672; then
  echo "services.d/sources.sh: nothing on 127.0.0.1:5672; starting rabbitmq-server"
  if command -v service >/dev/null 2>&1 && "${sudo[@]}" service rabbitmq-server start >/dev/null 2>&1; then
    :
  else
    "${sudo[@]}" rabbitmq-server -detached
  fi
  for _ in $(seq 1 120); do
    listening 5672 && break
    sleep 0.5
  done
  if ! listening 5672; then
    echo "services.d/sources.sh: rabbitmq-server did not come up on 5672" >&2
    exit 1
  fi
fi
echo "services.d/sources.sh: mariadb, redis-server and rabbitmq (on 5672) are ready"
