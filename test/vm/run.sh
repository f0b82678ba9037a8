#!/usr/bin/env bash
# VMs on Viperblock volumes, and the kernel NBD path, in QEMU guests (TCG)
# booting Debian's 6.1 kernel. Run as root after `make build`:
#
#   test/vm/run.sh            # or: make vm-test
#
# 1. qemu-nbd-uri: `vblock serve` a volume on a file store; a guest boots
#    with -drive file=nbd+unix:///?socket=...,if=virtio,cache=none, makes
#    ext4 on /dev/vda, writes files, syncs, powers off; serve stops cleanly.
# 2. snapshot-clone: snapshot, clone, serve the clone; a second guest finds
#    every file with its checksum, then writes, overwrites and deletes in
#    the clone. Host side (vblock export + debugfs): the source is as the
#    first guest left it, the clone holds its own writes; both pass e2fsck.
# 3. crash: a guest writes files in batches, syncing after each and
#    printing which files the sync made durable; the host kills QEMU with
#    kill -9 mid-batch and nbdkit with kill -9 too (nothing is drained),
#    serves the volume again from the same WAL directory; a third guest
#    mounts (journal recovery), and every file synced before the kill is
#    there with its checksum, and e2fsck -fn finds nothing.
# 4. kernel-nbd: nbdkit with the viperblock plugin on 127.0.0.1:PORT; in a
#    guest (user networking, the host is 10.0.2.2) test/vm/vmguest attaches
#    /dev/nbd0 with pkg/attach's kernel NBD attacher, mkfs, mount, write,
#    umount, detach, reattach; the host kills nbdkit and starts it again on
#    the same WAL directory while a write waits; Reconnect completes it.
#    Then, in the same guest, the CSI node plugin (cmd/node, static) with
#    the kernel NBD attacher: NodeStage/NodePublish/NodeUnpublish/
#    NodeUnstage of an ext4 and of a raw block volume, staged twice each.
# 5. attach-suite: pkg/attach's tests in a guest of their own
#    (pkg/attach/testdata/vm/run.sh: kernel NBD with an in-process server,
#    nbdfuse + loop with every capability; VB_KERNEL_NBD=1 and
#    VB_REQUIRE=all, so no test skips for a missing capability); each test
#    is a check.
# 6. live-migration: a guest writes, fsyncs and syncs checksummed files
#    while the host migrates it between two QEMU processes (node A and
#    node B) with QEMU's own migration, VB_VM_MIG_ROUNDS round trips (5);
#    then the target QEMU is killed at pre-switchover and, in standby
#    mode, the source's nbdkit during the handoff. Every synced file is
#    there with its checksum, e2fsck -fn passes in the guest and on the
#    host, no I/O error; the pause at each switch-over is measured.
#    VB_VM_MIG_MODE=standby (default: an nbdkit per node, the target's
#    with standby=true) or shared (one nbdkit for both QEMUs). See
#    migration.sh.
#
# Prints a line per check with timings, the timing of each host step, and
# ends with "N passed, N failed"; exits 1 if any check failed.
#
# Env: VB_VM_CACHE (guest cache, default /var/cache/viperblock-vm), KDEB,
# VB_VM_ONLY (e.g. "1 3": run only those scenarios), VB_VM_KEEP=1 (keep
# the work directory with the consoles and logs; kept anyway when a check
# failed), VM_SMP, VM_MEM.
# Needs (Debian): qemu-system-x86 busybox-static cpio e2fsprogs nbdkit
# util-linux (make deps installs them), and the kernel .deb via apt.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
# shellcheck source=migration.sh
. "$here/migration.sh" || exit 2

T0=$(date +%s.%N)
passed=0
failed=0
TIMES=()
since() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%6.1f", b-a}'; }
log() { echo "[$(since)s] $*"; }
secs() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }
pass() { passed=$((passed + 1)); log "ok    $1 (${2}s)"; }
fail() { failed=$((failed + 1)); log "FAIL  $1 (${2}s)${3:+: $3}"; }

# check NAME CMD...: a host-side check, run in this shell (CMD may set
# variables); CMD's output is shown on failure.
check() {
  local name=$1 t rc=0
  shift
  t=$(date +%s.%N)
  "$@" >"$work/check.out" 2>&1 || rc=$?
  if [ $rc = 0 ]; then
    pass "$name" "$(secs "$t")"
  else
    fail "$name" "$(secs "$t")" "exit $rc"
    tail -15 "$work/check.out" | sed 's/^/        /'
  fi
  return $rc
}
# timed NAME CMD...: a step whose time goes into the timing table.
timed() {
  local name=$1 t rc=0
  shift
  t=$(date +%s.%N)
  "$@" || rc=$?
  TIMES+=("$(printf '%-48s %6ss%s' "$name" "$(secs "$t")" "$([ $rc = 0 ] || echo "  (failed)")")")
  return $rc
}

for c in qemu-system-x86_64 nbdkit debugfs e2fsck cpio; do
  command -v $c >/dev/null || { echo "vm-test: $c missing (make deps)" >&2; exit 2; }
done
VBLOCK=$repo/bin/vblock
PLUGIN=$repo/lib/nbdkit-viperblock-plugin.so
[ -x "$VBLOCK" ] && [ -f "$PLUGIN" ] || { echo "vm-test: run make build first ($VBLOCK, $PLUGIN)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || echo "vm-test: not root; the kernel .deb download may fail" >&2

work=$(mktemp -d "${TMPDIR:-/tmp}/vb-vm.XXXXXX")
export VBLOCK_STORE=file://$work/store VBLOCK_WAL_DIR=$work/wal
mkdir -p "$work/store" "$work/wal"
# At exit, what still runs of what this script started: its background jobs
# (QEMU, vblock serve, nbdkit), by pid. nbdkit under vblock serve exits with
# its parent (PR_SET_PDEATHSIG).
keep=${VB_VM_KEEP:-}
cleanup() {
  local p
  for p in $(jobs -p); do kill -9 "$p" 2>/dev/null; done
  [ -n "$keep" ] || rm -rf "$work"
}
trap cleanup EXIT
want() { [ -z "${VB_VM_ONLY:-}" ] || [[ " $VB_VM_ONLY " == *" $1 "* ]]; }

# ---- processes -------------------------------------------------------------

# serve NAME: vblock serve NAME on $work/NAME.sock; sets SPID, NBDKIT_PID.
serve() {
  local name=$1 _
  rm -f "$work/$name.sock"
  "$VBLOCK" serve "$name" --socket "$work/$name.sock" >>"$work/serve-$name.log" 2>&1 &
  SPID=$!
  for _ in $(seq 600); do
    NBDKIT_PID=$(sed -n 's/.*serving volume.*(nbdkit pid \([0-9]*\)).*/\1/p' "$work/serve-$name.log" | tail -1)
    if [ -n "$NBDKIT_PID" ] && [ -S "$work/$name.sock" ] && kill -0 "$NBDKIT_PID" 2>/dev/null; then
      return 0
    fi
    kill -0 "$SPID" 2>/dev/null || break
    sleep 0.1
  done
  cat "$work/serve-$name.log"
  return 1
}
# unserve: SIGTERM to vblock serve; it drains the volume; exit 0 expected.
unserve() {
  kill -TERM "$SPID" 2>/dev/null
  wait_exit "$SPID" 120
}
# wait_exit PID SECS: waits for our child PID; its exit status, or 124 after
# SECS (it is killed then).
wait_exit() {
  local pid=$1 end=$((SECONDS + $2))
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$end" ]; then
      kill -9 "$pid" 2>/dev/null
      wait "$pid" 2>/dev/null
      return 124
    fi
    sleep 0.2
  done
  wait "$pid"
}

# boot NAME STEP [QEMU ARGS...]: boots the guest in the background with
# vbstep=STEP (and $APPEND) on the kernel command line, the console on
# $work/NAME.log and on $STDIN (default /dev/null); sets QPID. One vCPU
# ($SMP) unless VM_SMP says otherwise: under TCG a second one slows the
# boot more than it helps a guest that mostly waits for I/O.
SMP=1
boot() {
  local name=$1 step=$2
  shift 2
  VM_SMP=${VM_SMP:-$SMP} "$VM_DIR/qemu.sh" "$INITRD" "vbstep=$step ${APPEND:-}" "$@" >"$work/$name.log" 2>&1 <"${STDIN:-/dev/null}" &
  QPID=$!
}
# console NAME: the guest's console output without carriage returns.
console() { tr -d '\r' <"$work/$1.log"; }
# guest_checks NAME PREFIX: counts the guest's CHECK lines; requires
# VM_EXIT=0 unless the guest was killed on purpose (third argument).
guest_checks() {
  local name=$1 prefix=$2 killed=${3:-} line rest n
  while read -r line; do
    rest=${line#CHECK }
    if [[ $rest =~ ^(.*)\ ok\ ([0-9.]+)$ ]]; then
      pass "$prefix: ${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}"
    else
      n=${rest%% FAIL *}
      rest=${rest#"$n" FAIL }
      fail "$prefix: $n" "${rest%% *}" "${rest#* }"
    fi
  done < <(console "$name" | grep '^CHECK ')
  [ -n "$killed" ] && return 0
  if console "$name" | grep '^VM_EXIT=0$' >/dev/null; then
    return 0
  fi
  fail "$prefix: guest ran to the end" 0 "no VM_EXIT=0 in the console; last lines:"
  console "$name" | tail -25 | sed 's/^/        /'
  return 1
}
# run_guest NAME STEP PREFIX TIMEOUT [QEMU ARGS...]: boots and waits.
run_guest() {
  local name=$1 step=$2 prefix=$3 limit=$4 rc=0
  shift 4
  boot "$name" "$step" "$@"
  timed "$prefix: boot + guest steps" wait_exit "$QPID" "$limit" || rc=$?
  if [ $rc = 124 ]; then
    fail "$prefix: guest finished within ${limit}s" "$limit" "timed out; last lines:"
    console "$name" | tail -25 | sed 's/^/        /'
    return 1
  fi
  guest_checks "$name" "$prefix"
}
# nbd_drive NAME: QEMU's options for the volume served on $work/NAME.sock,
# split on purpose where used (the work directory has no spaces).
nbd_drive() { echo "-drive file=nbd+unix:///?socket=$work/$1.sock,format=raw,if=virtio,cache=none"; }

# lines TAG NAME: "path sha" pairs from the guest's TAG lines, sorted.
lines() { console "$2" | grep -E "^$1 [^ ]+ [0-9a-f]{64}$" | cut -d' ' -f2- | LC_ALL=C sort; }
# img_sums IMG DIR...: "path sha" of every file under DIR in the ext4 image
# IMG, read with debugfs (no mount, no root needed).
img_sums() {
  local img=$1 out d
  out=$(mktemp -d "$work/rdump.XXXXXX")
  shift
  for d in "$@"; do
    debugfs -R "rdump /$d $out" "$img" >/dev/null 2>&1
  done
  (cd "$out" && find . -type f | sed 's|^\./||' | LC_ALL=C sort | xargs -r sha256sum) | awk '{print $2, $1}'
  rm -rf "$out"
}
# same A B: files A and B are equal; shows the difference otherwise.
same() { diff "$1" "$2" >/dev/null || { diff "$1" "$2" | head -20; return 1; }; }
img_absent() { debugfs -R "stat /$2" "$1" 2>&1 | grep 'File not found' >/dev/null; }

# ---- the guest -------------------------------------------------------------

# Two initramfs: the base plus guest.sh for scenarios 1-3 and 6, and for 4 also
# the static vmguest and node binaries and the plugin (22 MiB more to unpack
# at each boot).
build_guest() {
  vm_build || return
  local ov=$work/overlay
  mkdir -p "$ov/guest"
  install -m 0755 "$here/guest.sh" "$ov/guest/run"
  vm_initrd "$ov" "$work/initrd-disk.gz"
  mkdir -p "$ov/usr/lib/viperblock"
  (cd "$repo" && CGO_ENABLED=0 go build -ldflags "-s -w" -o "$ov/guest/vmguest" ./test/vm/vmguest) || return
  (cd "$repo" && CGO_ENABLED=0 go build -ldflags "-s -w" -o "$ov/guest/node" ./cmd/node) || return
  cp "$PLUGIN" "$ov/usr/lib/viperblock/"
  vm_copy "$ov" $(ldd "$PLUGIN" | grep $'^\t' | grep -o '/[^ ]*')
  vm_initrd "$ov" "$work/initrd-knbd.gz"
}

log "work directory $work, guest cache ${VB_VM_CACHE:-/var/cache/viperblock-vm}"
if ! check "guest: kernel + initramfs (cached) + vmguest, node binaries" timed "guest build" build_guest; then
  echo "$passed passed, $failed failed"
  exit 1
fi
log "guest: $(basename "$VM_KERNEL"), initramfs $(du -h "$work/initrd-disk.gz" | cut -f1) (scenarios 1-3, 6), $(du -h "$work/initrd-knbd.gz" | cut -f1) (4)"
INITRD=$work/initrd-disk.gz

# ---- 1: QEMU on a served volume through an NBD URI -------------------------
s1_ok=
scenario1() {
  log "== 1: QEMU boots with the volume as nbd+unix:// (virtio-blk, cache=none)"
  check "s1: vblock create vol 256MiB" "$VBLOCK" create vol --size 256MiB || return
  check "s1: vblock serve vol" timed "s1: serve start" serve vol || return
  run_guest s1 write s1 300 $(nbd_drive vol) || { unserve; return 1; }
  lines SUM s1 >"$work/sums1"
  check "s1: the guest reported 13 checksums" test "$(wc -l <"$work/sums1")" = 13 || return
  check "s1: vblock serve stops cleanly (drain, exit 0)" timed "s1: serve stop (drain)" unserve || return
  check "s1: vblock fsck vol" "$VBLOCK" fsck vol || return
  s1_ok=1
}

# ---- 2: snapshot, clone, a second guest on the clone -----------------------
scenario2() {
  log "== 2: snapshot + clone; a guest boots on the clone"
  if [ -z "$s1_ok" ]; then
    fail "s2: needs scenario 1" 0 "scenario 1 did not pass"
    return 1
  fi
  check "s2: vblock snapshot create vol s1" timed "s2: snapshot" "$VBLOCK" snapshot create vol s1 || return
  check "s2: vblock clone vol@s1 vol-clone" timed "s2: clone" "$VBLOCK" clone vol@s1 vol-clone || return
  check "s2: vblock serve vol-clone" serve vol-clone || return
  run_guest s2 clone s2 300 $(nbd_drive vol-clone) || { unserve; return 1; }
  lines SUM s2 >"$work/sums2"
  check "s2: the clone has every file with its checksum" same "$work/sums1" "$work/sums2"
  lines NEWSUM s2 >"$work/sums2new"
  check "s2: vblock serve vol-clone stops cleanly" unserve || return
  check "s2: vblock export vol, vol-clone" timed "s2: export both (256 MiB each)" \
    sh -c "'$VBLOCK' export vol '$work/vol.img' && '$VBLOCK' export vol-clone '$work/clone.img'" || return
  img_sums "$work/vol.img" data >"$work/vol-after"
  check "s2: the source is unchanged (13 files, same checksums)" same "$work/sums1" "$work/vol-after"
  check "s2: the clone's new files are not in the source" img_absent "$work/vol.img" clone-only
  img_sums "$work/clone.img" data clone-only >"$work/clone-after"
  check "s2: the clone holds its writes (new, overwritten, deleted files)" same "$work/sums2new" "$work/clone-after"
  check "s2: e2fsck -fn on both images" sh -c "e2fsck -fn '$work/vol.img' && e2fsck -fn '$work/clone.img'"
  check "s2: vblock fsck vol-clone" "$VBLOCK" fsck vol-clone
  rm -f "$work/vol.img" "$work/clone.img"
}

# ---- 3: kill -9 mid-write ---------------------------------------------------
scenario3() {
  log "== 3: kill -9 of QEMU (and of nbdkit) mid-write; serve again from the WAL"
  check "s3: vblock create crash 256MiB" "$VBLOCK" create crash --size 256MiB || return
  check "s3: vblock serve crash" serve crash || return
  boot s3w crashwrite $(nbd_drive crash)
  local t end=$((SECONDS + 300)) batches
  t=$(date +%s.%N)
  # Wait for five synced batches, then kill at a random point of a later one.
  until grep -aq '^WRITING 6' "$work/s3w.log"; do
    if ! kill -0 "$QPID" 2>/dev/null || [ "$SECONDS" -ge "$end" ]; then
      fail "s3: the guest synced 5 batches" "$(secs "$t")" "it did not; last lines:"
      console s3w | tail -25 | sed 's/^/        /'
      kill -9 "$QPID" 2>/dev/null
      unserve
      return 1
    fi
    sleep 0.2
  done
  sleep "0.$((RANDOM % 9 + 1))"
  kill -9 "$QPID"
  wait "$QPID" 2>/dev/null
  kill -9 "$NBDKIT_PID"
  wait_exit "$SPID" 30
  TIMES+=("$(printf '%-48s %6ss' "s3: boot + write until kill -9" "$(secs "$t")")")
  guest_checks s3w s3 killed
  lines SYNCED s3w >"$work/synced"
  batches=$(console s3w | grep -c '^WRITING ')
  check "s3: QEMU and nbdkit killed (kill -9) in batch $batches, $(wc -l <"$work/synced") files synced before" \
    test "$(wc -l <"$work/synced")" -ge 30 || return
  check "s3: vblock serve crash again (same WAL dir: replay)" timed "s3: serve again (WAL replay)" serve crash || return
  run_guest s3c crashcheck s3 300 $(nbd_drive crash) || { unserve; return 1; }
  lines FILE s3c >"$work/found"
  check "s3: every file synced before the kill is intact" sh -c "LC_ALL=C comm -23 '$work/synced' '$work/found' | { ! grep .; }"
  log "      $(wc -l <"$work/found") files found after the crash, $(wc -l <"$work/synced") had been synced"
  check "s3: vblock serve stops cleanly" unserve || return
  check "s3: vblock fsck crash" "$VBLOCK" fsck crash
  check "s3: host: vblock export + e2fsck -fn" sh -c "'$VBLOCK' export crash '$work/crash.img' && e2fsck -fn '$work/crash.img'"
  rm -f "$work/crash.img"
}

# ---- 4: the kernel NBD attacher and the CSI node plugin in a guest ----------
# nbdkit_tcp: nbdkit with our plugin on 127.0.0.1:$PORT; sets NPID.
nbdkit_tcp() {
  rm -f "$work/knbd.pid"
  nbdkit -f -i 127.0.0.1 -p "$PORT" --pidfile "$work/knbd.pid" "$PLUGIN" volume=knbd "wal_dir=$VBLOCK_WAL_DIR" \
    >>"$work/nbdkit-knbd.log" 2>&1 &
  NPID=$!
  local _
  for _ in $(seq 600); do
    [ -s "$work/knbd.pid" ] && return 0
    kill -0 "$NPID" 2>/dev/null || break
    sleep 0.1
  done
  tail -5 "$work/nbdkit-knbd.log"
  return 1
}
scenario4() {
  log "== 4: kernel NBD (pkg/attach) against nbdkit over TCP; CSI node plugin in the guest"
  check "s4: vblock create knbd 256MiB" "$VBLOCK" create knbd --size 256MiB || return
  local _
  for _ in 1 2 3 4 5; do
    PORT=$((20000 + RANDOM % 20000))
    nbdkit_tcp && break
  done
  check "s4: nbdkit on 127.0.0.1:$PORT (viperblock plugin)" kill -0 "$NPID" || return
  mkfifo "$work/s4.in"
  # Two vCPUs here: the guest runs nbdkit, the node plugin and mkfs itself.
  SMP=2 INITRD=$work/initrd-knbd.gz APPEND="vbaddr=10.0.2.2:$PORT" STDIN=$work/s4.in boot s4 knbd $(vm_net_args)
  exec 7>"$work/s4.in"
  local t end=$((SECONDS + 600)) handled=0 reqs req
  t=$(date +%s.%N)
  while kill -0 "$QPID" 2>/dev/null; do
    if [ "$SECONDS" -ge "$end" ]; then
      kill -9 "$QPID"
      break
    fi
    sleep 0.3
    [ "$(grep -ac '^HOST ' "$work/s4.log")" -gt "$handled" ] || continue
    mapfile -t reqs < <(console s4 | grep '^HOST ')
    while [ "$handled" -lt "${#reqs[@]}" ]; do
      req=${reqs[$handled]#HOST }
      handled=$((handled + 1))
      case $req in
      kill-nbdkit)
        kill -9 "$NPID"
        wait "$NPID" 2>/dev/null
        log "      host: nbdkit killed (kill -9)"
        echo ok >&7
        ;;
      start-nbdkit)
        if nbdkit_tcp; then
          log "      host: nbdkit started again on the same WAL dir"
          echo ok >&7
        else
          echo "nbdkit did not start" >&7
        fi
        ;;
      *) echo "unknown request" >&7 ;;
      esac
    done
  done
  wait "$QPID" 2>/dev/null
  exec 7>&-
  TIMES+=("$(printf '%-48s %6ss' "s4: boot + kernel NBD + CSI node steps" "$(secs "$t")")")
  guest_checks s4 s4
  console s4 | grep -E '^(attached|staged|published) ' | sed 's/^/        guest: /'
  lines FILE s4 >"$work/knbd-files"
  kill -TERM "$NPID" 2>/dev/null
  check "s4: nbdkit stops cleanly (drain, exit 0)" wait_exit "$NPID" 120 || return
  check "s4: vblock fsck knbd" "$VBLOCK" fsck knbd
  check "s4: vblock export knbd + e2fsck -fn" sh -c "'$VBLOCK' export knbd '$work/knbd.img' && e2fsck -fn '$work/knbd.img'" || return
  img_sums "$work/knbd.img" "" | sed 's|^|/|' | grep -v '^/lost+found' >"$work/knbd-after"
  check "s4: the volume holds every file, incl. the write across the restart" \
    sh -c "test -s '$work/knbd-files' && diff '$work/knbd-files' '$work/knbd-after'"
  rm -f "$work/knbd.img"
}

# ---- 5: pkg/attach's own suite in a guest ------------------------------------
# Its tests need the nbd module (TestKernelNBD, with an in-process server)
# and every capability (the nbdfuse + loop tests grow ext4 online), so they
# run in the same guest; each test and subtest counts as a check here.
scenario5() {
  log "== 5: pkg/attach's tests in a guest (pkg/attach/testdata/vm/run.sh)"
  local t rc=0 line
  t=$(date +%s.%N)
  WORK=$work/attach "$repo/pkg/attach/testdata/vm/run.sh" >"$work/attach.log" 2>&1 || rc=$?
  TIMES+=("$(printf '%-48s %6ss' "s5: build test binary + boot + go test" "$(secs "$t")")")
  while read -r line; do
    if [[ $line =~ ^---\ (PASS|FAIL|SKIP):\ ([^ ]+)\ \(([0-9.]+)s\) ]]; then
      case ${BASH_REMATCH[1]} in
      PASS) pass "s5: ${BASH_REMATCH[2]}" "${BASH_REMATCH[3]}" ;;
      FAIL) fail "s5: ${BASH_REMATCH[2]}" "${BASH_REMATCH[3]}" ;;
      SKIP) log "skip  s5: ${BASH_REMATCH[2]}" ;;
      esac
    fi
  done < <(tr -d '\r' <"$work/attach.log")
  if [ $rc != 0 ]; then
    fail "s5: the guest's go test passed" "$(secs "$t")" "exit $rc; last lines:"
    tr -d '\r' <"$work/attach.log" | tail -25 | sed 's/^/        /'
  fi
}

want 1 && timed "scenario 1 (total)" scenario1
want 2 && timed "scenario 2 (total)" scenario2
want 3 && timed "scenario 3 (total)" scenario3
want 4 && timed "scenario 4 (total)" scenario4
want 5 && timed "scenario 5 (total)" scenario5
want 6 && timed "scenario 6 (total)" scenario6

echo "---- timings ----"
for l in "${TIMES[@]}"; do echo "$l"; done
printf '%-48s %6ss\n' "all" "$(secs "$T0")"
if [ -n "$keep" ] || [ "$failed" != 0 ]; then
  keep=1
  echo "vm-test: consoles and logs kept in $work"
fi
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
