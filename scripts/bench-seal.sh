#!/usr/bin/env bash
# fio over NBD (--ioengine=nbd) against viperblock volumes of each kind:
# plain, encrypted, zstd-compressed, encrypted and compressed (file store
# and WAL on local disk, the plugin's default cache), then the compression
# ratio and load time of a directory of real files (`vblock load-dir`).
# Prints IOPS, MB/s and p99 latency per job and the ratio of each kind to
# plain; the target: encrypted within 15% of plain on every job.
#
# Environment: BENCH_RUNTIME (seconds per job, default 10), BENCH_DIR
# (default /var/tmp), BENCH_LOAD_DIR (the directory load-dir loads,
# default /usr/share/doc), BENCH_SIZE (volume size, default 1G),
# BENCH_KINDS (default "plain encrypted zstd encrypted-zstd"; plain and
# encrypted are needed for the target lines).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
plugin="$root/lib/nbdkit-viperblock-plugin.so"
vblock="$root/bin/vblock"
runtime="${BENCH_RUNTIME:-10}"
size="${BENCH_SIZE:-1G}"
loaddir="${BENCH_LOAD_DIR:-/usr/share/doc}"

for t in nbdkit fio python3 mkfs.ext4; do
  command -v "$t" >/dev/null || { echo "bench: $t is not installed (make deps)" >&2; exit 1; }
done
for f in "$plugin" "$vblock"; do
  [ -e "$f" ] || { echo "bench: $f is missing (make build)" >&2; exit 1; }
done
fio --enghelp=nbd >/dev/null 2>&1 || { echo "bench: this fio has no nbd engine" >&2; exit 1; }

work="$(mktemp -d "${BENCH_DIR:-/var/tmp}/viperblock-bench-seal.XXXXXX")"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

head -c 32 /dev/urandom | base64 > "$work/kek"
export VBLOCK_STORE="file://$work/store"
read -r -a kinds <<< "${BENCH_KINDS:-plain encrypted zstd encrypted-zstd}"
flags() {
  case $1 in
    plain) ;;
    encrypted) echo "--encryption-key-file $work/kek" ;;
    zstd) echo "--compression zstd" ;;
    encrypted-zstd) echo "--encryption-key-file $work/kek --compression zstd" ;;
  esac
}
keyparam() { case $1 in encrypted*) echo "encryption_key_file=$work/kek" ;; *) echo "readonly=false" ;; esac; }

for k in "${kinds[@]}"; do
  # shellcheck disable=SC2046
  "$vblock" create "$k" --size "${size}iB" $(flags "$k") >/dev/null
  nbdkit -f --unix "$work/$k.sock" --pidfile "$work/$k.pid" "$plugin" volume="$k" "wal_dir=$work/wal" "$(keyparam "$k")" 2>>"$work/$k.log" &
  pids+=($!)
  for _ in $(seq 300); do [ -s "$work/$k.pid" ] && break; sleep 0.05; done
  [ -s "$work/$k.pid" ] || { cat "$work/$k.log" >&2; exit 1; }
done

echo "fio ${runtime}s per job, nbd engine, one connection per job; $(nproc) CPUs; disk: $(df -T "$work" | awk 'NR==2{print $2" on "$1}')"
job() {
  local name=$1 k=$2; shift 2
  fio --name="$name" --ioengine=nbd --uri="nbd+unix:///?socket=$work/$k.sock" \
    --output-format=json --output="$work/$name.$k.json" "$@" >/dev/null
}
untimed() { local k=$1; shift; fio --name=prep --ioengine=nbd --uri="nbd+unix:///?socket=$work/$k.sock" --output=/dev/null "$@"; }
common=(--time_based --runtime="$runtime" --ramp_time=1 --size=$size --randrepeat=0 --norandommap --refill_buffers)
for k in "${kinds[@]}"; do echo "  4k randwrite QD32: $k"; job randwrite "$k" --rw=randwrite --bs=4k --iodepth=32 "${common[@]}"; done
for k in "${kinds[@]}"; do
  echo "  4k randread QD32 (after a 1M sequential fill): $k"
  untimed "$k" --rw=write --bs=1M --iodepth=16 --size=$size --refill_buffers
  sleep 6 # the drain interval: the fill reaches the store
  job randread "$k" --rw=randread --bs=4k --iodepth=32 "${common[@]}"
done
for k in "${kinds[@]}"; do echo "  1M seq write QD16: $k"; job seqwrite "$k" --rw=write --bs=1M --iodepth=16 "${common[@]}"; done
for k in "${kinds[@]}"; do sleep 6; echo "  1M seq read QD16: $k"; job seqread "$k" --rw=read --bs=1M --iodepth=16 "${common[@]}"; done

python3 - "$work" "${kinds[@]}" <<'PY'
import json, sys
work, kinds = sys.argv[1], sys.argv[2:]
jobs = [("randwrite", "4k randwrite QD32", "write"), ("randread", "4k randread QD32", "read"),
        ("seqwrite", "1M seq write QD16", "write"), ("seqread", "1M seq read QD16", "read")]
res = {}
for j, _, d in jobs:
    for k in kinds:
        io = json.load(open(f"{work}/{j}.{k}.json"))["jobs"][0][d]
        res[(j, k)] = (io["iops"], io["bw_bytes"] / 1e6, io["clat_ns"].get("percentile", {}).get("99.000000", 0) / 1000)
print()
print(f"{'job':<20}{'kind':<16}{'IOPS':>10}{'MB/s':>10}{'p99 µs':>10}{'/plain':>9}")
for j, label, _ in jobs:
    for i, k in enumerate(kinds):
        iops, mbs, p99 = res[(j, k)]
        print(f"{label if i == 0 else '':<20}{k:<16}{iops:>10.0f}{mbs:>10.1f}{p99:>10.0f}{iops / max(res[(j, 'plain')][0], 1e-9):>8.2f}x")
print()
for j, label, _ in jobs:
    r = res[(j, "encrypted")][0] / max(res[(j, "plain")][0], 1e-9)
    print(f"target encrypted >= 0.85x plain, {label:<20} {'met ' if r >= 0.85 else 'MISSED'} ({r:.2f}x)")
PY

for k in "${kinds[@]}"; do kill -TERM "$(cat "$work/$k.pid")" 2>/dev/null || true; done
for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
pids=()

echo
echo "load-dir $loaddir ($(du -sh "$loaddir" 2>/dev/null | cut -f1)) into a new volume of each kind:"
printf '%-16s%10s%12s%12s%10s\n' kind seconds "blocks" stored ratio
for k in "${kinds[@]}"; do
  t0=$(date +%s.%N)
  # shellcheck disable=SC2046
  "$vblock" load-dir "ld-$k" "$loaddir" --wal-dir "$work/ldwal" --tmp-dir "$work" --progress never $(flags "$k") >/dev/null
  t1=$(date +%s.%N)
  "$vblock" inspect "ld-$k" --json | python3 -c '
import json, sys
s = json.load(sys.stdin)["Space"]
b, st = s["BlockBytes"], s["StoredBytes"]
print(f"{sys.argv[1]:<16}{float(sys.argv[2]):>10.1f}{b / 1e6:>10.1f}MB{st / 1e6:>10.1f}MB{b / max(st, 1):>9.2f}x")
' "$k" "$(python3 -c "print($t1 - $t0)")"
done
