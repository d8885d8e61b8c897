#!/usr/bin/env bash
# FP-Growth benchmark: `cartpulse fpgrowth` against pyfim (Borgelt's C implementation) and
# mlxtend (pure Python) on a generated basket file; see BENCHMARKS.md, "FP-Growth".
#
#   scripts/bench_fpgrowth.sh                          # 1 M baskets, supports 0.001 and 0.0005
#   BASKETS=200000 SUPPORTS="0.01" scripts/bench_fpgrowth.sh
#   BIN=target/ci/cartpulse scripts/bench_fpgrowth.sh  # an already-built binary, no build
#
# mlxtend wants a one-hot table (it densifies it: 1 M baskets x 5k items is 5 GB of
# booleans) and builds its tree in Python, so it runs on the first MLXTEND_BASKETS baskets
# (default 100 000; 0 = the whole file); cartpulse and pyfim are run on that sample too so
# all three counts can be compared. Every tool's itemsets are checked against cartpulse's
# (same itemsets, same counts); the script exits 1 on any difference.
set -euo pipefail
cd "$(dirname "$0")/.."

BASKETS=${BASKETS:-1000000}
SEED=${SEED:-42}
SUPPORTS=${SUPPORTS:-"0.001 0.0005"}
MLXTEND_BASKETS=${MLXTEND_BASKETS:-100000}
REPEAT=${REPEAT:-3} # cartpulse and pyfim: best of
WORK=target/bench-fpgrowth
VENV=target/bench-venv
mkdir -p "$WORK"

# --- tools -------------------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
"$VENV/bin/pip" install -q mlxtend pandas scipy
HAVE_PYFIM=1
if ! "$VENV/bin/python" -c 'import fim' 2>/dev/null; then
  if ! "$VENV/bin/pip" install -q pyfim; then
    echo "pyfim failed to install (it builds a C extension): running without it" >&2
    HAVE_PYFIM=0
  fi
fi

# BIN=path/to/cartpulse uses an already-built binary; unset, a release build is made.
if [ -n "${BIN:-}" ]; then
  SRC_BIN=$BIN
  [ -x "$SRC_BIN" ] || { echo "BIN=$SRC_BIN is not an executable file" >&2; exit 2; }
else
  cargo build --release -p cartpulse
  SRC_BIN=target/release/cartpulse
fi
# a private copy: other builds sharing target/ must not swap the binary mid-run
BIN="$WORK/cartpulse"
cp "$SRC_BIN" "$BIN"
echo "binary: $SRC_BIN" >&2

# Timings on a host where compilers are running measure the compilers: wait for them
# (at most QUIET_WAIT seconds, then go on and say so).
QUIET_WAIT=${QUIET_WAIT:-1800}
quiet_host() {
  local waited=0
  while [ "$(pgrep -c rustc || true)" -gt 0 ]; do
    if [ "$waited" -ge "$QUIET_WAIT" ]; then
      echo "  warning: rustc still busy after ${QUIET_WAIT}s; timing anyway" >&2
      return
    fi
    echo "  (waiting: rustc busy)" >&2
    sleep 15
    waited=$((waited + 15))
  done
}

# --- data --------------------------------------------------------------------------------
FULL="$WORK/baskets-$BASKETS-s$SEED.txt"
if [ ! -s "$FULL" ]; then
  echo "generating $FULL" >&2
  python3 scripts/gen_baskets.py --baskets "$BASKETS" --seed "$SEED" --out "$FULL"
fi
DATASETS=("$FULL")
if [ "$MLXTEND_BASKETS" != 0 ] && [ "$MLXTEND_BASKETS" -lt "$BASKETS" ]; then
  SAMPLE="$WORK/baskets-$BASKETS-s$SEED-first$MLXTEND_BASKETS.txt"
  head -n "$MLXTEND_BASKETS" "$FULL" >"$SAMPLE" # the generator writes no blank lines
  DATASETS+=("$SAMPLE")
else
  SAMPLE="$FULL"
fi

# --- the Python side ---------------------------------------------------------------------
cat >"$WORK/run_py.py" <<'EOF'
"""Times one Python FP-Growth on a basket file and compares its itemsets with cartpulse's."""
import json, resource, sys, time

tool, path, supp, reference, repeat = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], int(sys.argv[5])
t0 = time.perf_counter()
with open(path, encoding="utf-8") as f:
    baskets = [[n.strip() for n in line.split(",") if n.strip()] for line in f if line.strip()]
n = len(baskets)
t_read = time.perf_counter() - t0

if tool == "pyfim":
    import fim
    best = None
    for _ in range(repeat):
        t = time.perf_counter()
        res = fim.fpgrowth(baskets, target="s", supp=supp * 100, zmin=1, report="a")
        d = time.perf_counter() - t
        best = d if best is None or d < best else best
    found = {frozenset(items): int(c) for items, c in res}
    mine = best
else:
    import pandas as pd
    from mlxtend.preprocessing import TransactionEncoder
    from mlxtend.frequent_patterns import fpgrowth
    t = time.perf_counter()
    te = TransactionEncoder()
    onehot = te.fit(baskets).transform(baskets, sparse=True)
    df = pd.DataFrame.sparse.from_spmatrix(onehot, columns=te.columns_)
    t_encode = time.perf_counter() - t
    t = time.perf_counter()
    res = fpgrowth(df, min_support=supp, use_colnames=True)
    mine = time.perf_counter() - t
    t_read += t_encode
    found = {s: round(x * n) for s, x in zip(res["itemsets"], res["support"])}
total = t_read + mine

with open(reference, encoding="utf-8") as f:
    ref = {frozenset(r["items"]): r["count"] for r in map(json.loads, f)}
missing = len(ref.keys() - found.keys())
extra = len(found.keys() - ref.keys())
wrong = sum(1 for k in ref.keys() & found.keys() if ref[k] != found[k])
print(json.dumps({
    "itemsets": len(found), "same": missing == extra == wrong == 0,
    "diff": f"{missing} missing, {extra} extra, {wrong} other counts",
    "read": t_read, "mine": mine, "total": total,
    "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
EOF

# --- runs --------------------------------------------------------------------------------
ROWS="$WORK/rows.txt"
: >"$ROWS"
FAIL=0
row() { printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$@" | tee -a "$ROWS" >&2; }

for data in "${DATASETS[@]}"; do
  n=$(grep -c . "$data")
  for s in $SUPPORTS; do
    out="$WORK/out-$(basename "$data" .txt)-$s"
    best_total="" best_mine="" rss=""
    for _ in $(seq "$REPEAT"); do
      quiet_host
      t0=$EPOCHREALTIME
      /usr/bin/time -f '%M' -o "$WORK/rss" "$BIN" fpgrowth --input "$data" --min-support "$s" \
        --out "$out" 2>"$WORK/cartpulse.err"
      t1=$EPOCHREALTIME
      total=$(awk "BEGIN { print $t1 - $t0 }")
      mine=$(sed -n 's/.*mine \([0-9.]*\),.*/\1/p' "$WORK/cartpulse.err")
      if [ -z "$best_total" ] || awk "BEGIN { exit !($total < $best_total) }"; then
        best_total=$total best_mine=$mine
      fi
      rss=$(($(tail -n1 "$WORK/rss") / 1024))
    done
    tail -n1 "$WORK/cartpulse.err" >&2 # cartpulse's own summary (baskets, items, itemsets, times)
    count=$(wc -l <"$out/itemsets.jsonl")
    row "$n" "$s" cartpulse "$count" reference "$(printf %.2f "$best_total")" "$best_mine" "$rss"

    tools=()
    [ "$HAVE_PYFIM" = 1 ] && tools+=(pyfim)
    [ "$data" = "$SAMPLE" ] && tools+=(mlxtend)
    for tool in "${tools[@]}"; do
      quiet_host
      r=$("$VENV/bin/python" "$WORK/run_py.py" "$tool" "$data" "$s" "$out/itemsets.jsonl" \
        "$([ "$tool" = pyfim ] && echo "$REPEAT" || echo 1)")
      get() { echo "$r" | "$VENV/bin/python" -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
      same=$(get same)
      if [ "$same" = True ]; then match=same; else match="DIFFERENT: $(get diff)"; FAIL=1; fi
      row "$n" "$s" "$tool" "$(get itemsets)" "$match" "$(printf %.2f "$(get total)")" \
        "$(printf %.3f "$(get mine)")" "$(printf %.0f "$(get rss_mb)")"
    done
  done
done

echo
echo "| baskets | min support | tool | itemsets | vs cartpulse | total s | mining s | peak RSS MB |"
echo "|---|---|---|---|---|---|---|---|"
cat "$ROWS"
exit $FAIL
