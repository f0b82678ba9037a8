#!/usr/bin/env bash
# fio over NBD (--ioengine=nbd) against viperblock (file store and WAL on
# local disk) and, in the same run, nbdkit's built-in memory and file
# plugins. Prints IOPS, MB/s, p99 latency and the ratios ours/memory and
# ours/file, and checks the targets. Jobs: 4k randwrite QD32, 4k randread
# QD32 of data just written, 4k write+fsync QD1, 1M seq write and read QD16,
# and a durable 2 GiB seq write (1M QD16 then fsync, wall clock); then the
# peak RSS of the viperblock servers.
#
# Viperblock is measured two ways:
#   serve       what users run: `vblock serve` with default settings (64 MiB
#               read cache, 1 MiB read-ahead), the targets are checked on it;
#   viperblock  nbdkit with the plugin directly and cache=1GiB, so the whole
#               region fits in the read cache.
# The random-read job reads data just written (the whole region written
# sequentially, drained, no warm-up read): with the default cache most reads
# miss and go to a chunk file (in the page cache here); with cache=1GiB only
# the first read of each block does. Earlier versions of this script warmed
# the cache with a read pass over a 256 MiB working set first, which made
# every timed read a cache hit.
#
# Environment: BENCH_RUNTIME (seconds per job, default 10), BENCH_DIR (where
# the store, WAL and file image go; default /var/tmp), BENCH_KEEP=1 keeps
# the fio JSON output.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
plugin="$root/lib/nbdkit-viperblock-plugin.so"
vblock="$root/bin/vblock"
runtime="${BENCH_RUNTIME:-10}"
size=1G

for t in nbdkit fio python3; do
  command -v "$t" >/dev/null || { echo "bench: $t is not installed (make deps)" >&2; exit 1; }
done
for f in "$plugin" "$vblock"; do
  [ -e "$f" ] || { echo "bench: $f is missing (make build)" >&2; exit 1; }
done
fio --enghelp=nbd >/dev/null 2>&1 || { echo "bench: this fio has no nbd engine" >&2; exit 1; }

work="$(mktemp -d "${BENCH_DIR:-/var/tmp}/viperblock-bench.XXXXXX")"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ "${BENCH_KEEP:-0}" = 1 ]; then echo "bench: results kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME ARGS...: nbdkit -f on $work/NAME.sock; waits for the pidfile.
start() {
  local name=$1; shift
  nbdkit -f --unix "$work/$name.sock" --pidfile "$work/$name.pid" "$@" 2>>"$work/$name.log" &
  pids+=($!)
  for _ in $(seq 300); do
    [ -s "$work/$name.pid" ] && return 0
    kill -0 "${pids[-1]}" 2>/dev/null || { cat "$work/$name.log" >&2; exit 1; }
    sleep 0.05
  done
  echo "bench: nbdkit $name did not start" >&2; exit 1
}

# serve: `vblock serve` with default settings, on $work/serve.sock.
serve() {
  "$vblock" serve bench --socket "$work/serve.sock" --plugin "$plugin" \
    --store "file://$work/serve-store" --wal-dir "$work/serve-wal" --size "${size}iB" 2>>"$work/serve.log" &
  pids+=($!)
  for _ in $(seq 300); do
    [ -S "$work/serve.sock" ] && return 0
    kill -0 "${pids[-1]}" 2>/dev/null || { cat "$work/serve.log" >&2; exit 1; }
    sleep 0.05
  done
  echo "bench: vblock serve did not start" >&2; exit 1
}

truncate -s "$size" "$work/file.img"
serve
start viperblock "$plugin" volume=bench "store=file://$work/store" "wal_dir=$work/wal" size=$size cache=1GiB
start memory memory size=$size
start file file "file=$work/file.img"
targets=(serve viperblock memory file)

echo "fio ${runtime}s per job, nbd engine, one connection per job; disk: $(df -T "$work" | awk 'NR==2{print $2" on "$1}'); $(nproc) CPUs"
echo "viperblock: file store + WAL in $work; nbdkit $(nbdkit --version | awk '{print $2}'); $(fio --version)"

# job NAME TARGET fio-args...: one timed fio run, JSON to $work/NAME.TARGET.json
job() {
  local name=$1 target=$2; shift 2
  fio --name="$name" --ioengine=nbd --uri="nbd+unix:///?socket=$work/$target.sock" \
    --output-format=json --output="$work/$name.$target.json" "$@" >/dev/null
}
untimed() { # prefill or warm up, not measured
  local target=$1; shift
  fio --name=prep --ioengine=nbd --uri="nbd+unix:///?socket=$work/$target.sock" --output=/dev/null "$@"
}

# quiesce: before each timed job, wait until viperblock has drained what
# earlier jobs wrote (no WAL segment holds a record; the segment files it
# creates ahead of time, preallocates and recycles stay; format in package
# wal), so one job's background upload does not run inside the next job's
# measurement.
wal_pending() {
  python3 - "$work/wal" "$work/serve-wal" <<'EOF'
import glob, struct, sys
for p in [q for d in sys.argv[1:] for q in glob.glob(d + "/*/[0-9][0-9]/*.wal")]:
    try:
        b = open(p, "rb").read(4096 + 64)
    except OSError:
        continue
    if len(b) < 36 or b[:8] != b"VBWALSEG":
        continue
    ver, n = struct.unpack_from("<H", b, 8)[0], struct.unpack_from("<H", b, 12)[0]
    hlen = (40 if ver == 2 else 32) + n + 4
    rec = b[hlen:hlen + 4]
    if len(rec) == 4 and (rec == b"VBWR" if ver == 1 else rec == b[32:36]):
        sys.exit(0)  # a record: something is pending
sys.exit(1)
EOF
}
quiesce() {
  local t0=$SECONDS
  while wal_pending; do
    [ $((SECONDS - t0)) -ge 120 ] && { echo "  (viperblock still draining after 120 s; going on)"; return; }
    sleep 0.5
  done
  [ $((SECONDS - t0)) -gt 0 ] && echo "  (waited $((SECONDS - t0)) s for viperblock to drain)"
  return 0
}

common=(--time_based --runtime="$runtime" --ramp_time=1 --size=$size --randrepeat=0 --norandommap)
for t in "${targets[@]}"; do quiesce; echo "  running: 4k randwrite QD32 on $t"; job randwrite "$t" --rw=randwrite --bs=4k --iodepth=32 "${common[@]}"; done
for t in "${targets[@]}"; do
  echo "  running: 4k randread QD32 of data just written ($size written, no warm-up read) on $t"
  untimed "$t" --rw=write --bs=1M --iodepth=16 --size=$size
  quiesce
  job randread "$t" --rw=randread --bs=4k --iodepth=32 "${common[@]}"
done
for t in "${targets[@]}"; do quiesce; echo "  running: 4k write + fsync each, QD1 on $t"; job fsync "$t" --rw=write --bs=4k --iodepth=1 --fsync=1 "${common[@]}"; done
for t in "${targets[@]}"; do quiesce; echo "  running: 1M seq write QD16 on $t"; job seqwrite "$t" --rw=write --bs=1M --iodepth=16 "${common[@]}"; done
for t in "${targets[@]}"; do quiesce; echo "  running: 1M seq read QD16 on $t"; job seqread "$t" --rw=read --bs=1M --iodepth=16 "${common[@]}"; done
# Job f, durable sequential write: 2 GiB (the region twice) in 1 MiB
# requests at QD16, then one fsync, timed by the wall clock, so every
# server has to put the data on disk (job d mostly measures page caches).
for t in "${targets[@]}"; do
  quiesce
  echo "  running: durable 2 GiB seq write (1M QD16 + fsync, wall clock) on $t"
  t0=$(date +%s.%N)
  job durable "$t" --rw=write --bs=1M --iodepth=16 --size=$size --io_size=2G --end_fsync=1
  echo "$t0 $(date +%s.%N)" >"$work/durable.$t.wall"
done

# Peak resident memory of the viperblock servers over the whole run.
rss() { awk '/^VmHWM/{print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
serve_pid=$(pgrep -f "nbdkit.*$work/serve.sock" | head -1 || true)
echo "serve $(rss "${serve_pid:-0}")" >"$work/rss"
echo "viperblock $(rss "$(cat "$work/viperblock.pid")")" >>"$work/rss"

grep -h -E 'error|warning' "$work/viperblock.log" "$work/serve.log" | head -5 || true

python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
jobs = [("randwrite", "4k randwrite QD32", "write"), ("randread", "4k randread QD32 (new)", "read"),
        ("fsync", "4k write+fsync QD1", "write"), ("seqwrite", "1M seq write QD16", "write"),
        ("seqread", "1M seq read QD16", "read"), ("durable", "durable 2GiB write", "write")]
ours = ["serve", "viperblock"]
targets = ours + ["memory", "file"]
res = {}
for j, _, d in jobs:
    for t in targets:
        x = json.load(open(f"{work}/{j}.{t}.json"))["jobs"][0]
        io = x[d]
        p99 = io["clat_ns"].get("percentile", {}).get("99.000000", 0) / 1000
        if j == "fsync":  # the flush dominates: report its p99 (write p99 in the note)
            sync = x.get("sync", {}).get("lat_ns", {}).get("percentile", {}).get("99.000000", 0) / 1000
            res[(j, t, "wp99")] = p99
            p99 = sync
        if j == "durable":  # wall clock, the final fsync included
            t0, t1 = map(float, open(f"{work}/durable.{t}.wall").read().split())
            mbs = io["io_bytes"] / 1e6 / (t1 - t0)
            res[(j, t)] = (mbs * 1e6 / (1 << 20), mbs, p99)
            continue
        res[(j, t)] = (io["iops"], io["bw_bytes"] / 1e6, p99)

print()
print(f"{'job':<24}{'target':<12}{'IOPS':>10}{'MB/s':>10}{'p99 µs':>10}")
for j, label, _ in jobs:
    for i, t in enumerate(targets):
        iops, mbs, p99 = res[(j, t)]
        print(f"{label if i == 0 else '':<24}{t:<12}{iops:>10.0f}{mbs:>10.1f}{p99:>10.0f}")
print("(p99: completion latency; for write+fsync, the fsync's p99 — write p99s: " +
      ", ".join(f"{t} {res[('fsync', t, 'wp99')]:.0f}" for t in targets) + " µs)")
print()
for o in ours:
    print(f"{'ratio ' + o + '/other':<24}{'/memory':>10}{'/file':>10}   (IOPS; p99 for fsync)")
    ratio = {}
    for j, label, _ in jobs:
        k = 2 if j == "fsync" else 0
        r = [res[(j, o)][k] / max(res[(j, t)][k], 1e-9) for t in ("memory", "file")]
        ratio[j] = r
        print(f"{label:<24}{r[0]:>9.2f}x{r[1]:>9.2f}x")
    print()
    if o != "serve":
        continue
    checks = [("4k randwrite >= 0.9x memory", ratio["randwrite"][0] >= 0.9, f"{ratio['randwrite'][0]:.2f}x"),
              ("4k randread >= 0.9x file", ratio["randread"][1] >= 0.9, f"{ratio['randread'][1]:.2f}x"),
              ("fsync p99 <= 1.0x file", ratio["fsync"][1] <= 1.0, f"{ratio['fsync'][1]:.2f}x"),
              ("1M seq read >= 0.8x file", ratio["seqread"][1] >= 0.8, f"{ratio['seqread'][1]:.2f}x"),
              ("durable write >= 0.8x file", ratio["durable"][1] >= 0.8, f"{ratio['durable'][1]:.2f}x")]
    for name, ok, val in checks:
        print(f"target (serve) {name:<30} {'met ' if ok else 'MISSED'} ({val})")
    print()
for line in open(f"{work}/rss"):
    t, kb = line.split()
    print(f"peak RSS {t:<12}{int(kb) / 1024:>8.0f} MiB")
print("(serve: default settings: 512 MiB pending limit, 64 MiB read cache; viperblock: cache=1GiB)")
PY
