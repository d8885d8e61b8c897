#!/usr/bin/env bash
# Batch recomputation, cartpulse (DataFusion) against DuckDB running the same SQL over the same
# Parquet archive. See BENCHMARKS.md, "History and batch layer".
#
#   scripts/bench_batch.sh [EVENTS]        # default 1000000; the published figures: 100000000
#
# Environment:
#   DAYS=7        event-time span of the generated traffic (rate = EVENTS / DAYS / 86400 per s)
#   USERS=        generator users (default: EVENTS / 100, at least 100000)
#   RUNS=2        timed runs of each engine (the views are rebuilt from scratch each time)
#   THREADS=2     DataFusion target partitions ([batch] threads) and DuckDB's `SET threads`
#   MEM=0         [batch] memory_limit_mb for cartpulse batch (0: no limit; spills to WORK/spill)
#   WORK=/work/bench-tmp/batch   scratch directory (removed at the end unless KEEP=1)
#   BUILD=1       build first (BUILD=0: use the binaries already in target/release)
#   BIN=, EXAMPLES=   the cartpulse binary and the directory of dump_sql/per_view
#                 (default target/release, target/release/examples)
#   KEEP=0        keep WORK (archive, views) afterwards
#   FULL=0        also compare every view row by row (EXCEPT ALL both ways), not only counts/sums
#   PER_VIEW=1    also run crates/batch/examples/per_view.rs once: the same DataFusion statements
#                 timed per view (cartpulse batch itself reports only its total)
#
# Steps: `cartpulse gen` writes JSONL (deleted once archived), `cartpulse run` with a file
# source and a `parquet` sink archives it (analytics off), `dump_sql` prints every statement
# `cartpulse batch --complete` runs, then each engine is timed with /usr/bin/time -v:
#   cartpulse batch --quiet --archive LAKE --out VIEWS --config CFG --complete
#   python crates/batch/examples/duckdb_batch.py run SQL.json DUCK --threads 2
# and the two outputs are compared (crates/batch/examples/duckdb_batch.py compare).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

EVENTS=${1:-1000000}
DAYS=${DAYS:-7}
RUNS=${RUNS:-2}
THREADS=${THREADS:-2}
WORK=${WORK:-/work/bench-tmp/batch}
KEEP=${KEEP:-0}
FULL=${FULL:-0}
PER_VIEW=${PER_VIEW:-1}
USERS=${USERS:-$(( EVENTS / 100 > 100000 ? EVENTS / 100 : 100000 ))}
RATE=$(python3 -c "print(round($EVENTS / ($DAYS * 86400.0), 4))")

target=${CARGO_TARGET_DIR:-target}
bin=${BIN:-$target/release/cartpulse}
examples=${EXAMPLES:-$target/release/examples}
py=$target/duckdb-venv/bin/python

log() { echo "bench_batch: $*" >&2; }

if [ "${BUILD:-1}" = 1 ]; then
  log "building (release)"
  cargo build --release -q -p cartpulse
  cargo build --release -q -p cartpulse-batch --example dump_sql --example per_view
fi
bash scripts/services.d/duckdb.sh >&2

rm -rf "$WORK"
mkdir -p "$WORK"
if [ "$KEEP" != 1 ]; then
  trap 'rm -rf "$WORK"' EXIT
fi

log "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'), $(free -g | awk '/^Mem:/ {print $2 " GiB RAM, " $7 " GiB available"}')"
log "date: $(date -u +%FT%TZ); load average: $(cut -d' ' -f1-3 /proc/loadavg)"
log "disk: $(df -h /work | awk 'NR==2 {print $4 " free on " $6}')"

cat >"$WORK/gen.toml" <<EOF
users = $USERS
EOF
cat >"$WORK/cartpulse.toml" <<EOF
[pipeline]
shards = 2

[pipeline.checkpoint]
dir = "$WORK/ck"
interval = "10s"

[analytics]
enabled = false

[source]
type = "file"
path = "$WORK/events.jsonl"
format = "json"

[[sinks]]
type = "parquet"
dir = "$WORK/lake"

[batch]
threads = $THREADS
memory_limit_mb = ${MEM:-0}
spill_dir = "$WORK/spill"
EOF

log "gen: $EVENTS events, $USERS users, rate $RATE events/s of event time (~$DAYS days)"
t=$(date +%s.%N)
"$bin" gen --events "$EVENTS" --seed 42 --rate "$RATE" --config "$WORK/gen.toml" --out "$WORK/events.jsonl"
jsonl_bytes=$(stat -c %s "$WORK/events.jsonl")
log "gen: $(python3 -c "print(round($(date +%s.%N) - $t, 1))") s, $(( jsonl_bytes / 1000000 )) MB of JSONL"

log "archive: cartpulse run (file source -> parquet sink, analytics off)"
/usr/bin/time -v -o "$WORK/run.time" "$bin" run --config "$WORK/cartpulse.toml" 2>"$WORK/run.log" >/dev/null \
  || { tail -20 "$WORK/run.log" >&2; exit 1; }
rm -f "$WORK/events.jsonl"
rm -rf "$WORK/ck"
run_wall=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$WORK/run.time")
lake_bytes=$(find "$WORK/lake" -name '*.parquet' -printf '%s\n' | awk '{s += $1} END {print s}')
lake_files=$(find "$WORK/lake" -name '*.parquet' | wc -l)
log "archive: $run_wall wall, $lake_files Parquet files, $(( lake_bytes / 1000000 )) MB"

"$examples/dump_sql" "$WORK/lake" "$WORK/cartpulse.toml" >"$WORK/sql.json"
"$py" - "$WORK/sql.json" "$WORK/lake" <<'EOF' >&2
import json, sys, duckdb
p = json.load(open(sys.argv[1]))
n = sum(len(d["statements"]) for d in p["days"]) + len(p["totals"]) + 1
rows = duckdb.connect().execute(f"SELECT count(*), min(ts), max(ts) FROM read_parquet('{sys.argv[2]}/**/*.parquet')").fetchone()
print(f"bench_batch: {rows[0]} archived events from {rows[1]} to {rows[2]}; {len(p['days'])} days, "
      f"{n} statements; windows user={p['user_window']} global={p['global_window']}, lookback {p['lookback_ms']} ms")
EOF

field() { sed -n "s/.*$1: //p" "$2"; }
results=()
for i in $(seq 1 "$RUNS"); do
  rm -rf "$WORK/views" "$WORK/duck"
  sync
  log "run $i: cartpulse batch"
  /usr/bin/time -v -o "$WORK/cp.time" "$bin" batch --quiet --archive "$WORK/lake" --out "$WORK/views" \
    --config "$WORK/cartpulse.toml" --complete 2>"$WORK/cp.log"
  cp_wall=$(field 'Elapsed (wall clock) time (h:mm:ss or m:ss)' "$WORK/cp.time")
  cp_rss=$(field 'Maximum resident set size (kbytes)' "$WORK/cp.time")
  cp_cpu=$(field 'Percent of CPU this job got' "$WORK/cp.time")
  cat "$WORK/cp.log" >&2
  sync
  log "run $i: duckdb"
  /usr/bin/time -v -o "$WORK/dd.time" "$py" crates/batch/examples/duckdb_batch.py run "$WORK/sql.json" \
    "$WORK/duck" --threads "$THREADS" >"$WORK/dd.json"
  dd_wall=$(field 'Elapsed (wall clock) time (h:mm:ss or m:ss)' "$WORK/dd.time")
  dd_rss=$(field 'Maximum resident set size (kbytes)' "$WORK/dd.time")
  dd_cpu=$(field 'Percent of CPU this job got' "$WORK/dd.time")
  cat "$WORK/dd.json" >&2
  line="run $i: cartpulse batch $cp_wall wall, $(( cp_rss / 1024 )) MiB peak RSS, CPU $cp_cpu | duckdb $dd_wall wall, $(( dd_rss / 1024 )) MiB peak RSS, CPU $dd_cpu | load $(cut -d' ' -f1-3 /proc/loadavg)"
  log "$line"
  results+=("$line")
done

if [ "$PER_VIEW" = 1 ]; then
  log "per view: DataFusion (crates/batch/examples/per_view.rs), DuckDB (the last run above)"
  rm -rf "$WORK/pv"
  /usr/bin/time -v -o "$WORK/pv.time" "$examples/per_view" "$WORK/sql.json" "$WORK/pv" "$THREADS" >"$WORK/pv.json"
  log "per_view: $(field 'Elapsed (wall clock) time (h:mm:ss or m:ss)' "$WORK/pv.time") wall, $(( $(field 'Maximum resident set size (kbytes)' "$WORK/pv.time") / 1024 )) MiB peak RSS"
  echo "datafusion per view: $(cat "$WORK/pv.json")"
  echo "duckdb per view: $(cat "$WORK/dd.json")"
  rm -rf "$WORK/pv"
fi

log "comparing the last run's outputs"
cmp_args=()
[ "$FULL" = 1 ] && cmp_args+=(--full)
"$py" crates/batch/examples/duckdb_batch.py compare "$WORK/views" "$WORK/duck" "${cmp_args[@]}" >&2 || log "DIFFERENCES (above)"

echo "events=$EVENTS users=$USERS rate=$RATE jsonl_mb=$(( jsonl_bytes / 1000000 )) parquet_mb=$(( lake_bytes / 1000000 )) parquet_files=$lake_files archive_run=$run_wall"
for r in "${results[@]}"; do echo "$r"; done
