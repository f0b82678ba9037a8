#!/usr/bin/env bash
# Space under random overwrites, measured with the real stack: `vblock
# serve` (nbdkit + the viperblock plugin) on a file store, fio's nbd engine
# over the Unix socket. A 1 GiB volume is filled, then overwritten with
# 4 GiB of 4 KiB random writes with repeats (--norandommap) and a FLUSH
# every 256 writes (--fsync=256). While the volume stays attached, the
# script compares the store's chunk objects (du) with the live data (vblock
# inspect), right after fio and once the compactor has settled, and after
# the server stops it reports the compaction's share of the bytes written to
# the store. Two variants: no snapshot, and a snapshot taken half way.
# Target: at most 1.25x of live data while attached.
#
# Environment: BENCH_DIR (default /var/tmp), BENCH_SPACE_OVERWRITE (default
# 4G), BENCH_SPACE_SETTLE (seconds to wait for the compactor, default 120),
# BENCH_SPACE_VARIANTS (default "plain snapshot"), BENCH_SPACE_COMPACT
# (vblock serve --compact settings, e.g. bandwidth=0 for no budget; default
# none: the engine's defaults), BENCH_KEEP=1 keeps the work directory.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
vblock="$root/bin/vblock"
plugin="$root/lib/nbdkit-viperblock-plugin.so"
overwrite="${BENCH_SPACE_OVERWRITE:-4G}"
settle="${BENCH_SPACE_SETTLE:-120}"
variants="${BENCH_SPACE_VARIANTS:-plain snapshot}"
target=1.25

for t in nbdkit fio python3; do
  command -v "$t" >/dev/null || { echo "bench-space: $t is not installed (make deps)" >&2; exit 1; }
done
for f in "$vblock" "$plugin"; do
  [ -e "$f" ] || { echo "bench-space: $f is missing (make build)" >&2; exit 1; }
done
fio --enghelp=nbd >/dev/null 2>&1 || { echo "bench-space: this fio has no nbd engine" >&2; exit 1; }

work="$(mktemp -d "${BENCH_DIR:-/var/tmp}/viperblock-space.XXXXXX")"
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  if [ "${BENCH_KEEP:-0}" = 1 ]; then echo "bench-space: kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# stored BYTES of chunk objects (disk usage), live BYTES (inspect).
# (du may race with the compactor deleting chunks: its complaint is harmless.)
stored() { { du -sb --apparent-size "$1/store/$2/chunks" 2>/dev/null || true; } | cut -f1; }
stored_du() { { du -sk "$1/store/$2/chunks" 2>/dev/null || true; } | awk '{printf "%.0f\n", $1*1024}'; }
live() {
  local i
  for i in 1 2 3 4 5; do
    VBLOCK_STORE="file://$1/store" "$vblock" inspect "$2" --json 2>/dev/null |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["Space"]["LiveBytes"])' 2>/dev/null && return 0
    sleep 0.5
  done
  echo "bench-space: vblock inspect $2 failed" >&2; return 1
}
ratio() { python3 -c "import sys; print(f'{int(sys.argv[1])/max(1,int(sys.argv[2])):.3f}')" "$1" "$2"; }

# wait_drained DIR: until the WAL is (nearly) empty.
wait_drained() {
  local t0=$SECONDS
  while [ "$(du -sk "$1/wal" | cut -f1)" -gt 1024 ] && [ $((SECONDS - t0)) -lt 120 ]; do sleep 0.5; done
  sleep 6 # one more drain interval: the last partial drain commits
}

results=()
settled_bytes=()
for variant in $variants; do
  d="$work/$variant"
  mkdir -p "$d"
  export VBLOCK_STORE="file://$d/store"
  compact=()
  [ -n "${BENCH_SPACE_COMPACT:-}" ] && compact=(--compact "$BENCH_SPACE_COMPACT")
  "$vblock" serve space --socket "$d/s.sock" --wal-dir "$d/wal" --size 1GiB --cache 64MiB "${compact[@]}" 2>"$d/serve.log" &
  pid=$!
  for _ in $(seq 600); do [ -S "$d/s.sock" ] && break; kill -0 "$pid" 2>/dev/null || { cat "$d/serve.log" >&2; exit 1; }; sleep 0.05; done
  uri="nbd+unix:///?socket=$d/s.sock"
  echo "== $variant${BENCH_SPACE_COMPACT:+ (compaction: $BENCH_SPACE_COMPACT)}: fill 1 GiB, then $overwrite of 4 KiB random overwrites (repeats, FLUSH every 256)"
  fio --name=fill --ioengine=nbd --uri="$uri" --rw=write --bs=1M --iodepth=16 --size=1G --output=/dev/null
  fio_over() {
    fio --name=over --ioengine=nbd --uri="$uri" --rw=randwrite --bs=4k --iodepth=32 --size=1G \
      --io_size="$1" --norandommap --randrepeat=0 --fsync=256 --output-format=json --output="$d/over-$2.json" >/dev/null
    python3 -c 'import json,sys; j=json.load(open(sys.argv[1]))["jobs"][0]["write"]; print("  fio: %.0f IOPS, %.1f MB/s" % (j["iops"], j["bw_bytes"]/1e6))' "$d/over-$2.json"
  }
  t0=$SECONDS
  if [ "$variant" = snapshot ]; then
    half=$(python3 -c "import sys; n=sys.argv[1]; m={'K':1<<10,'M':1<<20,'G':1<<30}; print(int(n[:-1])*m[n[-1]]//2 if n[-1] in m else int(n)//2)" "$overwrite")
    fio_over "$half" 1
    # The snapshot pins the chunks it sees, with whatever dead space they
    # hold at this moment: the compactor never rewrites a pinned chunk.
    sp=$(stored "$d" space); lp=$(live "$d" space)
    echo "  at the snapshot: stored $sp bytes, live $lp bytes: $(ratio "$sp" "$lp")x"
    "$vblock" snapshot create space mid >/dev/null
    echo "  snapshot 'mid' taken after $half bytes"
    fio_over "$half" 2
  else
    fio_over "$overwrite" 1
  fi
  echo "  overwrites took $((SECONDS - t0)) s"
  wait_drained "$d"
  s0=$(stored "$d" space); l0=$(live "$d" space)
  r0=$(ratio "$s0" "$l0")
  echo "  right after fio: stored $s0 bytes, live $l0 bytes: ${r0}x"
  t1=$SECONDS
  while [ $((SECONDS - t1)) -lt "$settle" ]; do
    s1=$(stored "$d" space); l1=$(live "$d" space)
    python3 -c "import sys; sys.exit(0 if int(sys.argv[1]) <= $target*int(sys.argv[2]) else 1)" "$s1" "$l1" && break
    sleep 2
  done
  sleep 5 # let a compaction under way finish and delete
  s1=$(stored "$d" space); l1=$(live "$d" space); du1=$(stored_du "$d" space)
  r1=$(ratio "$s1" "$l1"); rdu=$(ratio "$du1" "$l1")
  echo "  settled after $((SECONDS - t1)) s: stored $s1 bytes ($du1 on disk), live $l1 bytes: ${r1}x (${rdu}x by disk usage)"
  VBLOCK_STORE="file://$d/store" "$vblock" inspect space | grep -E '^(stored|snapshots):' | sed 's/^/  /'
  kill -TERM "$pid"; wait "$pid" || true; pid=""
  share=$(python3 - "$d/serve.log" <<'PY'
import re, sys
log = open(sys.argv[1]).read()
m = None
for line in log.splitlines():
    if "volume closed" in line:
        m = line
if not m:
    print("n/a"); sys.exit()
g = lambda k: int(re.search(k + r"=(\d+)", m).group(1))
drained, gcw = g("bytes_drained"), g("gc_bytes_written")
print(f"{gcw/(drained+gcw):.3f} (compaction wrote {gcw} bytes, drains {drained}; gc runs {g('gc_runs')}, reclaimed {g('gc_bytes_reclaimed')} bytes)")
PY
)
  echo "  compaction's share of bytes written to the store: $share"
  results+=("$variant: ${r0}x right after fio, ${r1}x settled (${rdu}x by du); compaction share ${share%% *}")
  settled_bytes+=("$s1 $l1")
done

echo
echo "space (store / live data, target <= ${target}x while attached):"
fail=0
for i in "${!results[@]}"; do
  echo "  ${results[$i]}"
  # The exact byte counts, not the rounded ratio printed above.
  read -r s l <<<"${settled_bytes[$i]}"
  python3 -c "import sys; sys.exit(0 if int(sys.argv[1]) <= $target*int(sys.argv[2]) else 1)" "$s" "$l" || {
    echo "    over the target: $s stored > $target x $l live"; fail=1; }
done
[ "$fail" = 0 ] && echo "target met" || { echo "TARGET MISSED"; exit 1; }
