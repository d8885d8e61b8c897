#!/usr/bin/env bash
# Kafka benchmark (BENCHMARKS.md, "Kafka"): starts a Tansu broker (the one the tests use,
# installed by scripts/services.d/kafka.sh) on a free loopback port with memory storage, then
# `cartpulse bench kafka`: produce EVENTS generated events keyed by user into PARTITIONS
# partitions, consume them raw with the same client library, then run one consumer-group
# member's whole pipeline over the backlog.
#
#   scripts/bench_kafka.sh                             # 2 M events, 8 partitions
#   EVENTS=10000000 scripts/bench_kafka.sh             # the 10 M backlog catch-up
#   BIN=target/ci/cartpulse scripts/bench_kafka.sh     # an already-built binary, no build
set -euo pipefail
cd "$(dirname "$0")/.."

EVENTS=${EVENTS:-2000000}
PARTITIONS=${PARTITIONS:-8}
SHARDS=${SHARDS:-1}
if [ -z "${BIN:-}" ]; then
  cargo build --release -q
  BIN=target/release/cartpulse
fi
bash scripts/services.d/kafka.sh >/dev/null
TANSU="${CARGO_TARGET_DIR:-target}/tansu/tansu"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p target/bench-kafka
"$TANSU" broker --listener-url "tcp://127.0.0.1:$PORT" --advertised-listener-url "tcp://127.0.0.1:$PORT" \
  --storage-engine memory://tansu/ >target/bench-kafka/tansu.log 2>&1 &
BROKER=$!
trap 'kill $BROKER 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  if (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
  sleep 0.1
done
RUST_LOG=warn "$BIN" bench kafka --brokers "127.0.0.1:$PORT" --events "$EVENTS" \
  --partitions "$PARTITIONS" --shards "$SHARDS" --dir target/bench-kafka "$@"
