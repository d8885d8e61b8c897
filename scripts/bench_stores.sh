#!/usr/bin/env bash
# Store sinks against a plain bulk load of the same rows with each store's own client.
# See BENCHMARKS.md, "Stores".
#
#   scripts/bench_stores.sh [ROWS]          # default 500000 (10 epochs of 50,000)
#
# Environment: RUNS=2 (each measurement), WORK=/work/bench-tmp/stores, PG="host=127.0.0.1
# user=postgres dbname=test" (psql connection), REDIS_HOST=127.0.0.1, CH_HTTP=18123 and
# CH_TCP=19000 (the ClickHouse server this script starts in WORK, as crates/stores/tests do).
#
# Sinks: crates/stores/examples/store_bench.rs (write + pre_commit + commit per epoch).
# Baselines, on the rows `store_bench dump-rows` writes (the same records, the same epochs):
#   PostgreSQL  psql \copy of all rows into an empty table with the same columns and key;
#               and an upsert variant: per epoch, \copy into a temporary table, then
#               INSERT … SELECT … ON CONFLICT (key) DO UPDATE, one transaction per epoch
#   Redis       redis-cli --pipe of the sink's own commands (ZREMRANGEBYSCORE, ZADD, PEXPIRE
#               per row, ZREMRANGEBYRANK per key and SET committed_epoch per epoch) with no
#               MULTI/EXEC and no staging; and of a bare ZADD per row
#   ClickHouse  clickhouse-client --query "INSERT … FORMAT JSONEachRow" < rows.json (one
#               INSERT of all rows, same table definition), and one curl POST of the same body
set -euo pipefail
cd "$(dirname "$0")/.."

ROWS=${1:-500000}
RUNS=${RUNS:-2}
WORK=${WORK:-/work/bench-tmp/stores}
PG=${PG:-host=127.0.0.1 user=postgres dbname=test}
REDIS_HOST=${REDIS_HOST:-127.0.0.1}
CH_HTTP=${CH_HTTP:-18123}
CH_TCP=${CH_TCP:-19000}
target=${CARGO_TARGET_DIR:-target}
bench=$target/release/examples/store_bench

log() { echo "bench_stores: $*" >&2; }
now() { date +%s.%N; }
rate() { python3 -c "print(f'{$ROWS / ($2 - $1):,.0f} rows/s ({$2 - $1:.2f} s)')"; }

[ "${BUILD:-1}" = 1 ] && cargo build --release -q -p cartpulse-stores --example store_bench
rm -rf "$WORK"
mkdir -p "$WORK"
ch_pid=
cleanup() {
  if [ -n "$ch_pid" ]; then kill "$ch_pid" 2>/dev/null || true; wait "$ch_pid" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

log "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'), $(free -g | awk '/^Mem:/ {print $2 " GiB RAM"}'); $(date -u +%FT%TZ); load $(cut -d' ' -f1-3 /proc/loadavg)"
log "servers: $(psql "$PG" -Atc 'SHOW server_version'), redis $(redis-cli -h "$REDIS_HOST" info server | sed -n 's/^redis_version:\(.*\)\r$/\1/p')"

# ClickHouse: a private server, configured like crates/stores/tests/clickhouse.rs
ch=$WORK/ch
mkdir -p "$ch"
cat >"$ch/users.xml" <<'EOF'
<?xml version="1.0"?>
<yandex>
  <profiles><default></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
    <profile>default</profile><quota>default</quota></default></users>
  <quotas><default></default></quotas>
</yandex>
EOF
cat >"$ch/config.xml" <<EOF
<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><console>1</console></logger>
  <http_port>$CH_HTTP</http_port>
  <tcp_port>$CH_TCP</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <path>$ch/data/</path>
  <tmp_path>$ch/tmp/</tmp_path>
  <user_files_path>$ch/user_files/</user_files_path>
  <format_schema_path>$ch/format_schemas/</format_schema_path>
  <users_config>$ch/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>67108864</mark_cache_size>
</yandex>
EOF
(cd "$ch" && exec /usr/sbin/clickhouse-server --config-file="$ch/config.xml" >/dev/null 2>&1) &
ch_pid=$!
for _ in $(seq 1 300); do
  curl -sf "http://127.0.0.1:$CH_HTTP/" --data-binary 'SELECT 1' >/dev/null 2>&1 && break
  sleep 0.1
done
chq() { curl -sSf "http://127.0.0.1:$CH_HTTP/" --data-binary "$1"; }
log "clickhouse $(chq 'SELECT version()')"

"$bench" dump-rows "$WORK/rows" "$ROWS" >&2
ls -la "$WORK/rows" >&2

cols="user_id TEXT NOT NULL, window_start BIGINT NOT NULL, window_end BIGINT NOT NULL, events BIGINT, views BIGINT, adds BIGINT, removes BIGINT, update_qtys BIGINT, checkouts BIGINT, qty_added BIGINT, qty_removed BIGINT, value_added NUMERIC(18,4), value_removed NUMERIC(18,4), value_delta NUMERIC(18,4), epoch BIGINT NOT NULL, PRIMARY KEY (user_id, window_start, window_end)"
set_cols="events = EXCLUDED.events, views = EXCLUDED.views, adds = EXCLUDED.adds, removes = EXCLUDED.removes, update_qtys = EXCLUDED.update_qtys, checkouts = EXCLUDED.checkouts, qty_added = EXCLUDED.qty_added, qty_removed = EXCLUDED.qty_removed, value_added = EXCLUDED.value_added, value_removed = EXCLUDED.value_removed, value_delta = EXCLUDED.value_delta, epoch = EXCLUDED.epoch"
upsert=$WORK/upsert.sql
: >"$upsert"
for f in "$WORK"/rows/pg_epoch_*.tsv; do
  cat >>"$upsert" <<EOF
BEGIN;
CREATE TEMP TABLE st (LIKE bench_base.user_windows) ON COMMIT DROP;
\\copy st FROM '$f'
INSERT INTO bench_base.user_windows SELECT * FROM st ON CONFLICT (user_id, window_start, window_end) DO UPDATE SET $set_cols;
COMMIT;
EOF
done
pg_reset() {
  psql "$PG" -q -v ON_ERROR_STOP=1 -c "DROP SCHEMA IF EXISTS bench_base CASCADE; CREATE SCHEMA bench_base; CREATE TABLE bench_base.user_windows ($cols)" >/dev/null
}
ch_reset() {
  chq "DROP DATABASE IF EXISTS bench_base" && chq "CREATE DATABASE bench_base"
  chq "CREATE TABLE bench_base.user_windows (\`user_id\` String, \`window_start\` Int64, \`window_end\` Int64, \`events\` Int64, \`views\` Int64, \`adds\` Int64, \`removes\` Int64, \`update_qtys\` Int64, \`checkouts\` Int64, \`qty_added\` Int64, \`qty_removed\` Int64, \`value_added\` Decimal(18, 4), \`value_removed\` Decimal(18, 4), \`value_delta\` Decimal(18, 4), epoch UInt64, seq UInt64, version UInt64) ENGINE = ReplacingMergeTree(version) ORDER BY (user_id, window_start, window_end)"
}
redis_reset() {
  redis-cli -h "$REDIS_HOST" --scan --pattern 'cartpulse_bench:*' | xargs -r -n 1000 redis-cli -h "$REDIS_HOST" unlink >/dev/null
}

for i in $(seq 1 "$RUNS"); do
  log "run $i ($(date -u +%T), load $(cut -d' ' -f1-3 /proc/loadavg))"
  # sinks
  "$bench" postgres "$ROWS"
  "$bench" redis "$ROWS"
  "$bench" clickhouse "http://127.0.0.1:$CH_HTTP" "$ROWS"

  # PostgreSQL baselines
  pg_reset
  t=$(now); psql "$PG" -q -v ON_ERROR_STOP=1 -c "\\copy bench_base.user_windows FROM '$WORK/rows/pg_all.tsv'"; u=$(now)
  echo "postgres baseline, psql \\copy into the keyed table: $(rate "$t" "$u")"
  n=$(psql "$PG" -Atc 'SELECT count(*) FROM bench_base.user_windows'); [ "$n" = "$ROWS" ] || log "postgres: $n rows, expected $ROWS"
  pg_reset
  t=$(now); psql "$PG" -q -v ON_ERROR_STOP=1 -f "$upsert" >/dev/null; u=$(now)
  echo "postgres baseline, per epoch \\copy into a temp table + INSERT … ON CONFLICT DO UPDATE: $(rate "$t" "$u")"
  n=$(psql "$PG" -Atc 'SELECT count(*) FROM bench_base.user_windows'); [ "$n" = "$ROWS" ] || log "postgres: $n rows, expected $ROWS"

  # Redis baselines
  redis_reset
  t=$(now); redis-cli -h "$REDIS_HOST" --pipe <"$WORK/rows/redis_same.resp" >"$WORK/pipe.out"; u=$(now)
  echo "redis baseline, redis-cli --pipe, the sink's commands without MULTI/EXEC: $(rate "$t" "$u") [$(tail -1 "$WORK/pipe.out" | tr -d '\r')]"
  redis_reset
  t=$(now); redis-cli -h "$REDIS_HOST" --pipe <"$WORK/rows/redis_zadd.resp" >"$WORK/pipe.out"; u=$(now)
  echo "redis baseline, redis-cli --pipe, one ZADD per row: $(rate "$t" "$u") [$(tail -1 "$WORK/pipe.out" | tr -d '\r')]"
  redis_reset

  # ClickHouse baselines
  ch_reset
  t=$(now); clickhouse-client --port "$CH_TCP" --query "INSERT INTO bench_base.user_windows FORMAT JSONEachRow" <"$WORK/rows/ch_rows.json"; u=$(now)
  echo "clickhouse baseline, clickhouse-client INSERT … FORMAT JSONEachRow (one INSERT): $(rate "$t" "$u")"
  n=$(chq 'SELECT count() FROM bench_base.user_windows'); [ "$n" = "$ROWS" ] || log "clickhouse: $n rows, expected $ROWS"
  ch_reset
  t=$(now); curl -sSf "http://127.0.0.1:$CH_HTTP/?query=INSERT%20INTO%20bench_base.user_windows%20FORMAT%20JSONEachRow" --data-binary @"$WORK/rows/ch_rows.json"; u=$(now)
  echo "clickhouse baseline, one HTTP POST (curl) of the same body: $(rate "$t" "$u")"
  n=$(chq 'SELECT count() FROM bench_base.user_windows'); [ "$n" = "$ROWS" ] || log "clickhouse: $n rows, expected $ROWS"
done
psql "$PG" -q -c "DROP SCHEMA IF EXISTS bench_base CASCADE" >/dev/null
