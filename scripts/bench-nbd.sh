#!/usr/bin/env bash
# fio over NBD (--ioengine=nbd) against viperblock (file store and WAL on
# local disk) and, in the same run, nbdkit's built-in memory and file
# plugins. Prints IOPS, MB/s, p99 latency and the ratios ours/memory and
# ours/file, and checks the targets.
#
# Viperblock is measured two ways:
#   serve       what users run: `vblock serve` with default settings (on a
#               file store: no memory read cache, the page cache serves the
#               chunk files), the targets are checked on it;
#   viperblock  nbdkit with the plugin directly and cache=1GiB, so the whole
#               region fits in the engine's read cache.
# The random-read job reads data just written (the whole region written
# sequentially, drained, no warm-up read): serve reads every block from a
# chunk file (in the page cache here); with cache=1GiB only the first read
# of each block does. Earlier versions of this script warmed the cache with
# a read pass over a 256 MiB working set first, which made every timed read
# a cache hit. At the end: the peak RSS of both servers.
#
# Jobs: a 4k randwrite QD32, b 4k randread QD32 (new data), c 4k write +
# fsync each QD1 (flush p99), d 1M seq write QD16, e 1M seq read QD16, f
# durable 2 GiB sequential write (1M, QD16, one fsync at the end; timed from
# start to the fsync's return, so data still in memory counts only once
# durable).
#
# Environment: BENCH_RUNTIME (seconds per job, default 10), BENCH_DIR (where
# the store, WAL and file image go; default /var/tmp), BENCH_KEEP=1 keeps
# the fio JSON output, BENCH_JOBS (the jobs to run, e.g. "c f"; default
# all; the targets are checked only when all run), BENCH_TARGETS (default
# "serve viperblock memory file"), BENCH_VBLOCK and BENCH_PLUGIN (the
# binaries to measure; default bin/vblock and lib/ of this tree),
# BENCH_SERVE_ARGS (more `vblock serve` flags, e.g. "--wal-defer 0").
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
plugin="${BENCH_PLUGIN:-$root/lib/nbdkit-viperblock-plugin.so}"
vblock="${BENCH_VBLOCK:-$root/bin/vblock}"
runtime="${BENCH_RUNTIME:-10}"
size=1G  # the region of jobs a-e
vsize=2G # the volumes and the file image: job f writes all of it
jobs="${BENCH_JOBS:-a b c d e f}"
want() { [[ " $jobs " == *" $1 "* ]]; }

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
    --store "file://$work/serve-store" --wal-dir "$work/serve-wal" --size "${vsize}iB" ${BENCH_SERVE_ARGS:-} 2>>"$work/serve.log" &
  pids+=($!)
  for _ in $(seq 300); do
    [ -S "$work/serve.sock" ] && return 0
    kill -0 "${pids[-1]}" 2>/dev/null || { cat "$work/serve.log" >&2; exit 1; }
    sleep 0.05
  done
  echo "bench: vblock serve did not start" >&2; exit 1
}

truncate -s "$vsize" "$work/file.img"
read -r -a targets <<<"${BENCH_TARGETS:-serve viperblock memory file}"
for t in "${targets[@]}"; do
  case $t in
  serve) serve ;;
  viperblock) start viperblock "$plugin" volume=bench "store=file://$work/store" "wal_dir=$work/wal" size=$vsize cache=1GiB ;;
  memory) start memory memory size=$vsize ;;
  file) start file file "file=$work/file.img" ;;
  *) echo "bench: unknown target $t" >&2; exit 1 ;;
  esac
done

echo "fio ${runtime}s per job, nbd engine, one connection per job; disk: $(df -T "$work" | awk 'NR==2{print $2" on "$1}'); $(nproc) CPUs"
echo "viperblock: file store + WAL in $work; nbdkit $(nbdkit --version | awk '{print $2}'); $(fio --version)"

# job NAME TARGET fio-args...: one timed fio run, JSON to $work/NAME.TARGET.json
ours_ran=0 # a job ran on serve or viperblock since the last quiesce
job() {
  local name=$1 target=$2; shift 2
  case $target in serve | viperblock) ours_ran=1 ;; esac
  fio --name="$name" --ioengine=nbd --uri="nbd+unix:///?socket=$work/$target.sock" \
    --output-format=json --output="$work/$name.$target.json" "$@" >/dev/null
}
untimed() { # prefill or warm up, not measured
  local target=$1; shift
  case $target in serve | viperblock) ours_ran=1 ;; esac
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
  # Writes no flush asked for stay in memory (their WAL write is deferred)
  # until a drain takes them, at the latest after the drain interval (5 s).
  if [ "$ours_ran" = 1 ]; then sleep 6; ours_ran=0; fi
  while wal_pending; do
    [ $((SECONDS - t0)) -ge 120 ] && { echo "  (viperblock still draining after 120 s; going on)"; return; }
    sleep 0.5
  done
  [ $((SECONDS - t0)) -gt 6 ] && echo "  (waited $((SECONDS - t0)) s for viperblock to drain)"
  return 0
}

common=(--time_based --runtime="$runtime" --ramp_time=1 --size=$size --randrepeat=0 --norandommap)
want a && for t in "${targets[@]}"; do quiesce; echo "  running: 4k randwrite QD32 on $t"; job randwrite "$t" --rw=randwrite --bs=4k --iodepth=32 "${common[@]}"; done
want b && for t in "${targets[@]}"; do
  echo "  running: 4k randread QD32 of data just written ($size written, no warm-up read) on $t"
  untimed "$t" --rw=write --bs=1M --iodepth=16 --size=$size
  quiesce
  job randread "$t" --rw=randread --bs=4k --iodepth=32 "${common[@]}"
done
want c && for t in "${targets[@]}"; do quiesce; echo "  running: 4k write + fsync each, QD1 on $t"; job fsync "$t" --rw=write --bs=4k --iodepth=1 --fsync=1 "${common[@]}"; done
want d && for t in "${targets[@]}"; do quiesce; echo "  running: 1M seq write QD16 on $t"; job seqwrite "$t" --rw=write --bs=1M --iodepth=16 "${common[@]}"; done
want e && for t in "${targets[@]}"; do quiesce; echo "  running: 1M seq read QD16 on $t"; job seqread "$t" --rw=read --bs=1M --iodepth=16 "${common[@]}"; done
want f && for t in "${targets[@]}"; do
  quiesce
  echo "  running: durable $vsize sequential write (1M, QD16, fsync at the end) on $t"
  t0=$(date +%s.%N)
  job durable "$t" --rw=write --bs=1M --iodepth=16 --size=$vsize --end_fsync=1
  echo "$t0 $(date +%s.%N)" >"$work/durable.$t.wall"
done

# Peak resident memory of the viperblock servers over the whole run.
rss() { awk '/^VmHWM/{print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
: >"$work/rss"
for t in serve viperblock; do
  [[ " ${targets[*]} " == *" $t "* ]] || continue
  p=$(pgrep -f "nbdkit.*$work/$t.sock" | head -1 || true)
  echo "$t $(rss "${p:-0}")" >>"$work/rss"
done

grep -h -E 'error|warning' "$work"/*.log 2>/dev/null | head -5 || true

python3 - "$work" "$jobs" "$vsize" "${targets[@]}" <<'PY'
import json, sys
work, want, vsize, targets = sys.argv[1], sys.argv[2].split(), sys.argv[3], sys.argv[4:]
jobs = [("randwrite", "4k randwrite QD32", "write", "a"), ("randread", "4k randread QD32 (new)", "read", "b"),
        ("fsync", "4k write+fsync QD1", "write", "c"), ("seqwrite", "1M seq write QD16", "write", "d"),
        ("seqread", "1M seq read QD16", "read", "e"), ("durable", f"durable {vsize} seq write", "write", "f")]
jobs = [(j, label, d) for j, label, d, letter in jobs if letter in want]
ours = [t for t in ("serve", "viperblock") if t in targets]
res = {}
for j, _, d in jobs:
    for t in targets:
        x = json.load(open(f"{work}/{j}.{t}.json"))["jobs"][0]
        if j == "durable":  # MB/s from start to the end fsync's return
            t0, t1 = map(float, open(f"{work}/durable.{t}.wall").read().split())
            n = x[d]["io_bytes"]
            res[(j, t)] = (n / (1 << 20) / (t1 - t0), n / 1e6 / (t1 - t0), 0)
            continue
        io = x[d]
        p99 = io["clat_ns"].get("percentile", {}).get("99.000000", 0) / 1000
        if j == "fsync":  # the flush dominates: report its p99 (write p99 in the note)
            sync = x.get("sync", {}).get("lat_ns", {}).get("percentile", {}).get("99.000000", 0) / 1000
            res[(j, t, "wp99")] = p99
            p99 = sync
        res[(j, t)] = (io["iops"], io["bw_bytes"] / 1e6, p99)

print()
print(f"{'job':<24}{'target':<12}{'IOPS':>10}{'MB/s':>10}{'p99 µs':>10}")
for j, label, _ in jobs:
    for i, t in enumerate(targets):
        iops, mbs, p99 = res[(j, t)]
        print(f"{label if i == 0 else '':<24}{t:<12}{iops:>10.0f}{mbs:>10.1f}{p99:>10.0f}")
if any(j == "fsync" for j, _, _ in jobs):
    print("(p99: completion latency; for write+fsync, the fsync's p99 — write p99s: " +
          ", ".join(f"{t} {res[('fsync', t, 'wp99')]:.0f}" for t in targets) + " µs)")
if any(j == "durable" for j, _, _ in jobs):
    print(f"(durable {vsize} seq write: IOPS column is MiB/s from start to the end fsync's return)")
print()
others = [t for t in ("memory", "file") if t in targets]
for o in ours:
    print(f"{'ratio ' + o + '/other':<24}" + "".join(f"{'/' + t:>10}" for t in others) + "   (IOPS; p99 for fsync)")
    ratio = {}
    for j, label, _ in jobs:
        k = 2 if j == "fsync" else 0
        r = {t: res[(j, o)][k] / max(res[(j, t)][k], 1e-9) for t in others}
        ratio[j] = r
        print(f"{label:<24}" + "".join(f"{r[t]:>9.2f}x" for t in others))
    print()
    if o != "serve" or len(jobs) < 6 or len(others) < 2:
        continue
    ratio = {j: [r["memory"], r["file"]] for j, r in ratio.items()}
    checks = [("4k randwrite >= 0.9x memory", ratio["randwrite"][0] >= 0.9, f"{ratio['randwrite'][0]:.2f}x"),
              ("4k randread >= 0.9x file", ratio["randread"][1] >= 0.9, f"{ratio['randread'][1]:.2f}x"),
              ("fsync p99 <= 1.0x file", ratio["fsync"][1] <= 1.0, f"{ratio['fsync'][1]:.2f}x"),
              ("1M seq read >= 0.8x file", ratio["seqread"][1] >= 0.8, f"{ratio['seqread'][1]:.2f}x"),
              ("durable seq write >= 0.8x file", ratio["durable"][1] >= 0.8, f"{ratio['durable'][1]:.2f}x")]
    for name, ok, val in checks:
        print(f"target (serve) {name:<30} {'met ' if ok else 'MISSED'} ({val})")
    print()
for line in open(f"{work}/rss"):
    t, kb = line.split()
    print(f"peak RSS {t:<12}{int(kb) / 1024:>8.0f} MiB")
print("(serve: default settings: 512 MiB pending limit, 64 MiB read cache on S3, none on a file store; viperblock: cache=1GiB)")
PY
