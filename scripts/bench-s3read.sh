#!/usr/bin/env bash
# Cold 4 KiB random reads from S3, as users run them: a 1 GiB volume on
# versitygw (127.0.0.1), written through `vblock serve` and drained, then
# served again from a fresh WAL directory (a cold node: empty memory cache
# and chunk read cache) with default settings, and read with fio's nbd
# engine, 4 KiB random reads at QD32 for BENCH_RUNTIME seconds (default 20).
# Once with the default chunk read cache (1 GiB on S3) and once without
# (--read-cache 0: every memory cache miss is a ranged GET). Prints IOPS,
# p50 and p99, and the store GETs per read from the server's metrics.
#
# Environment: BENCH_RUNTIME, BENCH_DIR (default /var/tmp).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
plugin="$root/lib/nbdkit-viperblock-plugin.so"
vblock="$root/bin/vblock"
runtime="${BENCH_RUNTIME:-20}"
vgw="$(command -v versitygw || echo "$(go env GOPATH)/bin/versitygw")"
for t in nbdkit fio python3 curl "$vgw"; do
  command -v "$t" >/dev/null || { echo "bench: $t is not installed (make deps)" >&2; exit 1; }
done
for f in "$plugin" "$vblock"; do
  [ -e "$f" ] || { echo "bench: $f is missing (make build)" >&2; exit 1; }
done

work="$(mktemp -d "${BENCH_DIR:-/var/tmp}/viperblock-s3read.XXXXXX")"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$work/s3/bench"
"$vgw" --access benchkey --secret benchsecret0123456789 --port "127.0.0.1:$port" posix "$work/s3" >"$work/versitygw.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
export AWS_ACCESS_KEY_ID=benchkey AWS_SECRET_ACCESS_KEY=benchsecret0123456789 AWS_CA_BUNDLE=
store="s3://bench/v?endpoint=http://127.0.0.1:$port&region=us-east-1"

# serve WALDIR ARGS...: vblock serve on $work/s.sock.
serve() {
  rm -f "$work/s.sock"
  "$vblock" serve vol --socket "$work/s.sock" --plugin "$plugin" --store "$store" --wal-dir "$1" \
    --metrics "$work/metrics.sock" "${@:2}" >>"$work/serve.log" 2>&1 &
  spid=$!
  for _ in $(seq 300); do
    [ -S "$work/s.sock" ] && return 0
    kill -0 "$spid" 2>/dev/null || { cat "$work/serve.log" >&2; exit 1; }
    sleep 0.05
  done
  echo "bench: vblock serve did not start" >&2; exit 1
}
stop() { kill -TERM "$spid"; wait "$spid"; }

echo "cold 4k randread QD32 over 1 GiB on versitygw, ${runtime}s per run; $(nproc) CPUs"
serve "$work/wal-write" --size 1GiB
fio --name=fill --ioengine=nbd --uri="nbd+unix:///?socket=$work/s.sock" --rw=write --bs=1M --iodepth=16 --size=1G --output=/dev/null
stop
for rc in default 0; do
  args=()
  [ "$rc" = default ] || args=(--read-cache "$rc")
  serve "$work/wal-$rc" "${args[@]}"
  fio --name=r --ioengine=nbd --uri="nbd+unix:///?socket=$work/s.sock" --rw=randread --bs=4k --iodepth=32 --size=1G \
    --time_based --runtime="$runtime" --randrepeat=0 --norandommap --output-format=json --output="$work/r.json" >/dev/null
  gets=$(curl -s --unix-socket "$work/metrics.sock" http://x/v1/snapshot | python3 -c '
import json, sys
s = json.load(sys.stdin)
print(s["store"].get("get", {}).get("ok", 0))')
  python3 - "$work/r.json" "$rc" "$gets" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]["read"]
p = j["clat_ns"]["percentile"]
n = j["total_ios"]
print(f"read_cache={sys.argv[2]:<8} IOPS {j['iops']:>8.0f}  p50 {p['50.000000']/1e3:>7.0f} µs  p99 {p['99.000000']/1e3:>8.0f} µs  GETs/read {int(sys.argv[3])/max(n,1):.3f}")
PY
  stop
done
