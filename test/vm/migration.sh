# shellcheck shell=bash
# Scenario 6 of test/vm/run.sh, sourced by it (it uses run.sh's check, pass,
# fail, log, boot, console, guest_checks, wait_exit, lines, img_sums):
# live migration of a running guest between two QEMU processes, QEMU's own
# migration over a Unix socket.
#
# The guest (guest.sh's migwork step) writes files continuously, each one
# fsynced and followed by sync, and prints "SYNCED <path> <sha256>" once
# sync returned. The host migrates it A -> B -> A ... ($MIG_ROUNDS round
# trips); every migration starts a fresh QEMU with -incoming on the target
# node, runs `migrate` on the source's QMP socket, polls query-migrate until
# completed, and quits the source. Then the failure cases, in the same
# guest:
#
#   - a target QEMU is stopped with SIGTERM before the migration (as when a
#     migration is cancelled): the guest runs on at the source, no error;
#   - the target QEMU is killed (kill -9) at pre-switchover (the source's
#     vCPUs stopped, its disk flushed, the device state not sent): the
#     migration fails, the guest runs on at the source, and a migration to
#     a fresh target then completes;
#   - (standby mode) the source's nbdkit is killed (kill -9) as the
#     target's first request after the switch-over arrives, while the
#     source drains for the target: the guest runs on at the target, which
#     takes the volume over once the source's lease expired (short:
#     VB_VM_MIG_LEASE), with every flushed write.
#
# At the end the host writes "stop" on the console; the guest unmounts,
# checks the filesystem (e2fsck -fn) from a cold cache and lists every file
# with its checksum. The host checks that every file the guest reported
# synced is there with its checksum, that the console shows no I/O error,
# and, once nbdkit drained, the volume itself (vblock fsck, export,
# e2fsck -fn, the files' checksums read with debugfs).
#
# Storage modes (VB_VM_MIG_MODE):
#   standby  node A and node B each run nbdkit with the plugin and a WAL
#            directory of their own on one file store; the target's nbdkit
#            opens the volume with standby=true and takes it over at the
#            target's first write (the source drains, commits, releases);
#            the volume has store durability, so a source that dies
#            mid-handoff loses no flushed write.
#   shared   both QEMUs on one nbdkit (one WAL directory): shared storage
#            as QEMU's migration expects it, no handoff involved; the
#            baseline for the pauses.
#
# Pause measurements per migration, with median and worst at the end:
#   downtime   QEMU's query-migrate "downtime": vCPUs stopped on the source
#              until they run on the target;
#   first-io   the latency of the target's first disk request after the
#              migration began (in standby mode it waits for the handoff);
#   io-gap     from the source's last completed disk request before the
#              migration completed (its flush as its vCPUs stopped) to the
#              completion of the target's first one;
#   handoff    (standby mode) the handoff's pause as the target's plugin
#              logged it.
# The disk request times come from nbdkit's log filter ($work/nbd-*.req);
# an "order:" line per migration shows both QEMUs' requests around the
# switch-over, in ms from the moment the migrate tool saw "completed".
#
# What QEMU (7.2) sends around a migration, as these lines show it:
#   - a target QEMU reads the first sector (512 bytes) when it creates the
#     disk device, before the migration begins (geometry guess; none with
#     VB_VM_MIG_GEOMETRY=fixed), and nothing else until the guest runs;
#   - the source flushes when its vCPUs stop (the downtime's start), before
#     it sends the last state, and sends nothing more until it quits;
#   - the target's first request comes from the guest once it runs there;
#   - a QEMU flushes as it exits: the source when quit after the migration
#     (its disk inactive, the target possibly writing by then), and a
#     target stopped before any migration.
#
# Env: VB_VM_MIG_MODE (standby|shared, default standby), VB_VM_MIG_ROUNDS
# (round trips, default 5), VB_VM_MIG_LEASE (lease_duration=, default 3s),
# VB_VM_MIG_HANDOFF (handoff_timeout=, default 30s), VB_VM_MIG_MEM (guest
# MiB, default 512), VB_VM_MIG_GEOMETRY (guess|fixed, default guess: see
# MIG_CHS), VB_VM_MIG_LEG (files synced on each side between
# migrations, default 15).

MIG_MODE=${VB_VM_MIG_MODE:-standby}
MIG_ROUNDS=${VB_VM_MIG_ROUNDS:-5}
MIG_LEASE=${VB_VM_MIG_LEASE:-3s}
MIG_HANDOFF=${VB_VM_MIG_HANDOFF:-30s}
# QEMU guesses a disk's geometry when the device has none: it reads the
# first sector when the device is created, which on a target is before the
# migration even began (libvirt, so KubeVirt, gives none). "fixed" gives
# the geometry (256 MiB: 520 cylinders of 16 heads of 63 sectors), and the
# target QEMU sends nothing before the switch-over.
case ${VB_VM_MIG_GEOMETRY:-guess} in
fixed) MIG_CHS=,cyls=520,heads=16,secs=63 ;;
*) MIG_CHS= ;;
esac
# Files the guest syncs on each side before it migrates again.
MIG_LEG=${VB_VM_MIG_LEG:-15}
declare -A NBD_PID NBD_CONNS MIG_FD MIG_QPID MIG_CONN MIG_NBD
MIG_LOGS=()
MIG_DOWN=()
MIG_FIRST=()
MIG_GAP=()
MIG_TOOK=()

# mig_nbdkit NODE TAG [PARAM...]: nbdkit with the plugin for volume mig, the
# WAL directory $work/wal-NODE, on $work/nbd-TAG.sock, each request logged
# to $work/nbd-TAG.req (log filter); sets NBD_PID[TAG].
mig_nbdkit() {
  local node=$1 tag=$2 _
  shift 2
  mkdir -p "$work/wal-$node"
  rm -f "$work/nbd-$tag.sock" "$work/nbd-$tag.pid"
  nbdkit -f --unix "$work/nbd-$tag.sock" --pidfile "$work/nbd-$tag.pid" --filter=log "$PLUGIN" \
    volume=mig "wal_dir=$work/wal-$node" "lease_duration=$MIG_LEASE" "logfile=$work/nbd-$tag.req" "$@" \
    >>"$work/nbdkit-$tag.log" 2>&1 &
  NBD_PID[$tag]=$!
  NBD_CONNS[$tag]=0
  for _ in $(seq 600); do
    [ -s "$work/nbd-$tag.pid" ] && return 0
    kill -0 "${NBD_PID[$tag]}" 2>/dev/null || break
    sleep 0.1
  done
  tail -5 "$work/nbdkit-$tag.log"
  return 1
}

# mig_qemu TAG NBD [QEMU ARGS...]: boots the guest's QEMU TAG on nbdkit NBD
# (migwork step), QMP on $work/qmp-TAG.sock, console $work/TAG.log, stdin
# the fifo $work/TAG.in (held open on MIG_FD[TAG]); waits for the QMP
# socket (and, with -incoming unix:, the migration socket).
mig_qemu() {
  local tag=$1 nbd=$2 fd _
  shift 2
  mkfifo "$work/$tag.in"
  NBD_CONNS[$nbd]=$((NBD_CONNS[$nbd] + 1))
  MIG_CONN[$tag]=${NBD_CONNS[$nbd]}
  MIG_NBD[$tag]=$nbd
  VM_MEM=${VB_VM_MIG_MEM:-512} STDIN=$work/$tag.in boot "$tag" migwork \
    -drive "file=nbd+unix:///?socket=$work/nbd-$nbd.sock,format=raw,if=none,id=vd0,cache=none" \
    -device "virtio-blk-pci,drive=vd0$MIG_CHS" \
    -qmp "unix:$work/qmp-$tag.sock,server=on,wait=off" "$@"
  exec {fd}>"$work/$tag.in"
  MIG_FD[$tag]=$fd
  MIG_QPID[$tag]=$QPID
  for _ in $(seq 300); do
    if [ -S "$work/qmp-$tag.sock" ] && { [[ " $* " != *" -incoming "* ]] || [ -S "$work/mig-$tag.sock" ]; }; then
      return 0
    fi
    kill -0 "$QPID" 2>/dev/null || break
    sleep 0.1
  done
  tail -5 "$work/$tag.log"
  return 1
}

# mig_stop_qemu TAG: quits QEMU TAG over QMP (kill -9 if that fails) and
# closes its console fifo.
mig_stop_qemu() {
  local tag=$1
  local fd=${MIG_FD[$tag]}
  MIG_QUIT_AT=$(date +%s.%N)
  "$QMP" "$work/qmp-$tag.sock" run quit >/dev/null 2>&1 || kill -9 "${MIG_QPID[$tag]}" 2>/dev/null
  wait_exit "${MIG_QPID[$tag]}" 60 >/dev/null
  exec {fd}>&-
}
# status_is TAG STATE...: QEMU TAG's run state becomes STATE within 10 s.
status_is() {
  local tag=$1 end=$((SECONDS + 10)) st
  shift
  while :; do
    st=$("$QMP" "$work/qmp-$tag.sock" status 2>&1)
    [ "$st" = "$1" ] && return 0
    if [ "$SECONDS" -ge "$end" ]; then
      echo "$tag: state $st, want $1"
      return 1
    fi
    sleep 0.1
  done
}

# switched DST SRC: DST runs, SRC is stopped after its migration.
switched() { status_is "$1" running && status_is "$2" postmigrate; }

# runs_on TAG N: QEMU TAG runs the guest, and its console shows N SYNCED
# lines within 120 s.
runs_on() { status_is "$1" running && progress "$1" "$2" 120; }

# synced TAG: SYNCED lines in QEMU TAG's console.
synced() { console "$1" | grep -cE '^SYNCED [^ ]+ [0-9a-f]{64}$'; }
# progress TAG N SECS: QEMU TAG's console shows N SYNCED lines within SECS.
progress() {
  local end=$((SECONDS + $3))
  until [ "$(synced "$1")" -ge "$2" ]; do
    if [ "$SECONDS" -ge "$end" ] || ! kill -0 "${MIG_QPID[$1]}" 2>/dev/null; then
      echo "$1: $(synced "$1") files synced, want $2; last lines:"
      console "$1" | tail -10
      return 1
    fi
    sleep 0.2
  done
}
# no_io_errors TAG...: none of the consoles shows a kernel I/O or ext4 error.
no_io_errors() {
  local t
  for t in "$@"; do
    if console "$t" | grep -E 'I/O error|EXT4-fs error|Buffer I/O|WRITE-FAILED'; then
      return 1
    fi
  done
}

# reqs LOG CONN: the requests of connection CONN in nbdkit's log filter
# file LOG, one line each: "START DONE OP" (seconds since the epoch; DONE 0
# when no reply was logged).
reqs() {
  awk -v conn="connection=$2" '
    function t(   d, h) { split($1, d, "-"); split($2, h, ":"); return mktime(d[1] " " d[2] " " d[3] " " h[1] " " h[2] " 0") + h[3] }
    $3 != conn { next }
    $4 ~ /^(Read|Write|Flush|Trim|Zero|Cache|Extents)$/ { n++; id[$5] = n; st[n] = t(); op[n] = $4; next }
    $4 ~ /^\.\.\./ && ($5 in id) { dn[id[$5]] = t() }
    END { for (i = 1; i <= n; i++) printf "%.6f %.6f %s\n", st[i], dn[i] + 0, op[i] }' "$1"
}

# handoff_ms TAG: the handoff's pause as nbdkit TAG's plugin logged it
# ("volume handed over ... pause=DUR", else the engine's "took the volume
# over ... took=DUR"), in ms; nothing if neither was logged.
handoff_ms() {
  sed -n -e 's/.*volume handed over.* pause=\([0-9.]*\)\([µunm]*s\).*/\1 \2/p' \
    -e 's/.*took the volume over.* took=\([0-9.]*\)\([µunm]*s\).*/\1 \2/p' "$work/nbdkit-$1.log" | head -1 |
    awk '{ f = ($2 == "s") ? 1000 : ($2 == "ms") ? 1 : 0.001; printf "%.1f", $1 * f }'
}

# stats NAME VALUES...: "NAME: median M ms, worst W ms over N".
stats() {
  local name=$1
  shift
  printf '%s\n' "$@" | sort -n | awk -v name="$name" '{ v[NR] = $1 } END {
    if (NR == 0) { print name ": no values"; exit }
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    printf "%-10s median %7.1f ms, worst %7.1f ms over %d migrations\n", name, m, v[NR], NR }'
}

# migrate SRC DST LABEL [pause]: migrates QEMU SRC to QEMU DST (started with
# -incoming unix:$work/mig-DST.sock) and records the pauses; the migrate
# tool's output goes to $work/migrate-DST.out. With pause, the caller feeds
# the tool's stdin (see test/vm/qmp).
MIG_AFTER=0
MIG_QUIT_AT=0
migrate() {
  local src=$1 dst=$2 label=$3
  MIG_AFTER=$(date +%s.%N)
  if [ "${4:-}" = pause ]; then
    "$QMP" "$work/qmp-$src.sock" migrate "unix:$work/mig-$dst.sock" 120s pause <"$work/pause.in" >"$work/migrate-$dst.out" 2>&1
  else
    "$QMP" "$work/qmp-$src.sock" migrate "unix:$work/mig-$dst.sock" 120s </dev/null >"$work/migrate-$dst.out" 2>&1
  fi
  local rc=$?
  cat "$work/migrate-$dst.out"
  return $rc
}
# record SRC DST: after a completed migration and some I/O on DST, the
# pauses of this migration into MIG_DOWN, MIG_FIRST, MIG_GAP, and the order
# of the two QEMUs' disk requests around the switch-over (relative to the
# moment the migrate tool saw "completed", which polls every 10 ms).
record() {
  local src=$1 dst=$2 down done_at
  down=$(sed -n 's/^migrated downtime_ms=\([0-9]*\) .*/\1/p' "$work/migrate-$dst.out")
  done_at=$(sed -n 's/^migrated .*completed_at=\([0-9.]*\).*/\1/p' "$work/migrate-$dst.out")
  MIG_DOWN+=("$down")
  reqs "$work/nbd-${MIG_NBD[$src]}.req" "${MIG_CONN[$src]}" >"$work/reqs-$src"
  reqs "$work/nbd-${MIG_NBD[$dst]}.req" "${MIG_CONN[$dst]}" >"$work/reqs-$dst"
  local out first gap order
  # The target's first request after the migration began; the source's
  # last request that started before it; the source's requests after it.
  out=$(awk -v after="$MIG_AFTER" -v done_at="$done_at" -v down="$down" -v quit="$MIG_QUIT_AT" '
    function ms(x) { return sprintf("%+.1f", (x - done_at) * 1000) }
    FILENAME == ARGV[1] { if ($1 <= after) { early = early " " $3; next }
      if (!fs) { fs = $1; fd = $2; fop = $3 } ; next }
    $1 < done_at { ls = $1; ld = $2; lop = $3; next }
    { late++; lates = lates " " $3 " at " ms($1) }
    END {
      printf "%.1f %.1f ", (fd - fs) * 1000, (fd - ld) * 1000
      printf "the target before the migration:%s; downtime began ~%s ms; last source request before completion: %s at %s ms (done %s); first target request: %s at %s ms (done %s); source quit at %s ms, source requests after completion:%s\n",
        (early == "" ? " none" : early), ms(done_at - down / 1000), lop, ms(ls), ms(ld), fop, ms(fs), ms(fd), ms(quit), (late ? lates : " none")
    }' "$work/reqs-$dst" "$work/reqs-$src")
  read -r first gap order <<<"$out"
  MIG_FIRST+=("$first")
  MIG_GAP+=("$gap")
  local took=""
  if [ "$MIG_MODE" = standby ]; then
    took=$(handoff_ms "${MIG_NBD[$dst]}")
    [ -n "$took" ] && MIG_TOOK+=("$took")
  fi
  log "      $src -> $dst: downtime $down ms, target's first disk request $first ms, io-gap $gap ms${took:+, handoff $took ms (the target nbdkit log)} ($(grep -o 'total_ms=[0-9]*' "$work/migrate-$dst.out"))"
  log "        order: $order"
}

scenario6() {
  log "== 6: live migration between two QEMU processes ($MIG_MODE storage, $MIG_ROUNDS round trips)"
  local f0=$failed
  case $MIG_MODE in
  shared | standby) ;;
  *)
    fail "live-migration: VB_VM_MIG_MODE=$MIG_MODE" 0 "want shared or standby"
    return 1
    ;;
  esac
  QMP=$work/qmp
  check "live-migration: build the QMP client (test/vm/qmp)" sh -c "cd '$repo' && CGO_ENABLED=0 go build -o '$QMP' ./test/vm/qmp" || return
  check "live-migration: vblock create mig 256MiB --durability store" "$VBLOCK" create mig --size 256MiB --durability store || return
  check "live-migration: nbdkit on node a" mig_nbdkit a a0 || return
  local n=0 cur=q0 curnode=a curnbd=a0 t
  t=$(date +%s.%N)
  check "live-migration: QEMU q0 boots on node a" mig_qemu q0 a0 || return
  MIG_LOGS+=(q0)
  if ! check "live-migration: the guest's workload runs (20 files synced)" progress q0 20 300; then
    mig_stop_qemu q0
    return 1
  fi
  TIMES+=("$(printf '%-48s %6ss' "live-migration: boot + first 20 files" "$(secs "$t")")")
  # The target's nbdkit: the same server in shared mode, else a fresh one
  # in standby on the target node.
  local i dst dstnode dstnbd before total=$((2 * MIG_ROUNDS))
  t=$(date +%s.%N)
  for i in $(seq "$total"); do
    if [ "$curnode" = a ]; then dstnode=b; else dstnode=a; fi
    n=$((n + 1))
    dst=q$n
    if [ "$MIG_MODE" = shared ]; then
      dstnbd=$curnbd
    else
      dstnbd=$dstnode$n
      check "live-migration: $i/$total: standby nbdkit on node $dstnode" \
        mig_nbdkit "$dstnode" "$dstnbd" standby=true "handoff_timeout=$MIG_HANDOFF" || break
    fi
    check "live-migration: $i/$total: QEMU $dst -incoming on node $dstnode" \
      mig_qemu "$dst" "$dstnbd" -incoming "unix:$work/mig-$dst.sock" || break
    if ! check "live-migration: $i/$total: migrate $cur (node $curnode) -> $dst (node $dstnode)" migrate "$cur" "$dst" "$i"; then
      mig_stop_qemu "$dst"
      break
    fi
    MIG_LOGS+=("$dst")
    check "live-migration: $i/$total: $dst runs, $cur is postmigrate" switched "$dst" "$cur"
    mig_stop_qemu "$cur"
    check "live-migration: $i/$total: the workload goes on in $dst ($MIG_LEG files synced there)" progress "$dst" "$MIG_LEG" 120 || break
    record "$cur" "$dst"
    if [ "$MIG_MODE" = standby ]; then
      kill -TERM "${NBD_PID[$curnbd]}"
      check "live-migration: $i/$total: node $curnode's nbdkit ($curnbd) exits cleanly after the handoff" wait_exit "${NBD_PID[$curnbd]}" 60
    fi
    cur=$dst curnode=$dstnode curnbd=$dstnbd
  done
  TIMES+=("$(printf '%-48s %6ss' "live-migration: $total migrations" "$(secs "$t")")")
  check "live-migration: no I/O error in the consoles so far" no_io_errors "${MIG_LOGS[@]}"
  if [ "$i" != "$total" ] || [ "$failed" != "$f0" ]; then
    mig_abort
    return 1
  fi

  if ! mig_cancel_target || ! mig_kill_target; then
    mig_abort
    return 1
  fi
  if [ "$MIG_MODE" = standby ] && ! mig_kill_source; then
    mig_abort
    return 1
  fi

  # Stop the workload; the guest checks the filesystem and powers off.
  local fd=${MIG_FD[$cur]}
  echo stop >&"$fd"
  t=$(date +%s.%N)
  check "live-migration: the guest stops the workload, checks and powers off" wait_exit "${MIG_QPID[$cur]}" 300
  TIMES+=("$(printf '%-48s %6ss' "live-migration: final guest checks" "$(secs "$t")")")
  exec {fd}>&-
  local l
  : >"$work/mig-all.log"
  for l in "${MIG_LOGS[@]}"; do cat "$work/$l.log" >>"$work/mig-all.log"; done
  guest_checks mig-all "live-migration: guest"
  lines SYNCED mig-all >"$work/mig-synced"
  lines FILE mig-all >"$work/mig-found"
  check "live-migration: every file the guest synced ($(wc -l <"$work/mig-synced")) is there with its checksum" \
    sh -c "test -s '$work/mig-synced' && LC_ALL=C comm -23 '$work/mig-synced' '$work/mig-found' | { ! grep .; }"
  check "live-migration: no I/O or ext4 error in any console" no_io_errors mig-all
  kill -TERM "${NBD_PID[$curnbd]}"
  check "live-migration: node $curnode's nbdkit stops cleanly (drain, exit 0)" wait_exit "${NBD_PID[$curnbd]}" 120
  check "live-migration: vblock fsck mig" "$VBLOCK" fsck mig
  check "live-migration: host: vblock export mig + e2fsck -fn" \
    sh -c "'$VBLOCK' export mig '$work/mig.img' && e2fsck -fn '$work/mig.img'" || return
  img_sums "$work/mig.img" m >"$work/mig-host"
  check "live-migration: host: the volume holds every file the guest listed, same checksums" same "$work/mig-found" "$work/mig-host"
  rm -f "$work/mig.img"
  log "      pauses at switch-over ($MIG_MODE storage):"
  log "      $(stats downtime "${MIG_DOWN[@]}")"
  log "      $(stats first-io "${MIG_FIRST[@]}")"
  log "      $(stats io-gap "${MIG_GAP[@]}")"
  if [ "$MIG_MODE" = standby ]; then
    log "      $(stats handoff "${MIG_TOOK[@]}")"
  fi
}

# mig_abort: after a failure, kills what the scenario still runs (kill -9;
# its logs stay for the report).
mig_abort() {
  local p
  log "      live-migration: stopped after a failure; logs in $work"
  for p in "${MIG_QPID[@]}" "${NBD_PID[@]}"; do
    kill -9 "$p" 2>/dev/null && wait "$p" 2>/dev/null
  done
  return 0
}

# mig_kill_target: the target QEMU is killed at pre-switchover; the guest
# runs on at the source; then a migration to a fresh target completes.
mig_kill_target() {
  local dstnode dstnbd dst before k=kill-target f0=$failed
  if [ "$curnode" = a ]; then dstnode=b; else dstnode=a; fi
  n=$((n + 1))
  dst=q$n
  if [ "$MIG_MODE" = shared ]; then
    dstnbd=$curnbd
  else
    dstnbd=$dstnode$n
    check "live-migration: $k: standby nbdkit on node $dstnode" \
      mig_nbdkit "$dstnode" "$dstnbd" standby=true "handoff_timeout=$MIG_HANDOFF" || return
  fi
  check "live-migration: $k: QEMU $dst -incoming on node $dstnode" \
    mig_qemu "$dst" "$dstnbd" -incoming "unix:$work/mig-$dst.sock" || return
  rm -f "$work/pause.in"
  mkfifo "$work/pause.in"
  migrate "$cur" "$dst" "$k" pause >/dev/null 2>&1 &
  local mpid=$! end=$((SECONDS + 120))
  exec {MIG_PAUSE_IN}>"$work/pause.in"
  until grep -q '^pre-switchover' "$work/migrate-$dst.out" 2>/dev/null; do
    if [ "$SECONDS" -ge "$end" ] || ! kill -0 "$mpid" 2>/dev/null; then break; fi
    sleep 0.05
  done
  check "live-migration: $k: the migration reaches pre-switchover" grep -q '^pre-switchover' "$work/migrate-$dst.out"
  kill -9 "${MIG_QPID[$dst]}"
  wait "${MIG_QPID[$dst]}" 2>/dev/null
  local fd=${MIG_FD[$dst]}
  exec {fd}>&-
  echo go >&"$MIG_PAUSE_IN"
  exec {MIG_PAUSE_IN}>&-
  local rc=0
  wait "$mpid" || rc=$?
  check "live-migration: $k: target QEMU killed (kill -9) at pre-switchover: the migration fails" \
    sh -c "test $rc != 0 && grep '^failed' '$work/migrate-$dst.out'"
  before=$(synced "$cur")
  check "live-migration: $k: the guest runs on at the source $cur" status_is "$cur" running && check "live-migration: $k: 5 more files synced in $cur" progress "$cur" $((before + 5)) 120
  if [ "$MIG_MODE" = standby ]; then
    kill -TERM "${NBD_PID[$dstnbd]}"
    check "live-migration: $k: the standby nbdkit $dstnbd exits cleanly" wait_exit "${NBD_PID[$dstnbd]}" 60
  fi
  # A later migration to a fresh target.
  n=$((n + 1))
  dst=q$n
  if [ "$MIG_MODE" = standby ]; then
    dstnbd=$dstnode$n
    check "live-migration: $k: a fresh standby nbdkit on node $dstnode" \
      mig_nbdkit "$dstnode" "$dstnbd" standby=true "handoff_timeout=$MIG_HANDOFF" || return
  fi
  check "live-migration: $k: a fresh QEMU $dst -incoming on node $dstnode" \
    mig_qemu "$dst" "$dstnbd" -incoming "unix:$work/mig-$dst.sock" || return
  check "live-migration: $k: then a migration $cur -> $dst completes" migrate "$cur" "$dst" "$k-retry" || return
  MIG_LOGS+=("$dst")
  mig_stop_qemu "$cur"
  check "live-migration: $k: the workload goes on in $dst (5 files synced there)" progress "$dst" 5 120 || return
  record "$cur" "$dst"
  if [ "$MIG_MODE" = standby ]; then
    kill -TERM "${NBD_PID[$curnbd]}"
    check "live-migration: $k: node $curnode's nbdkit exits cleanly after the handoff" wait_exit "${NBD_PID[$curnbd]}" 60
  fi
  cur=$dst curnode=$dstnode curnbd=$dstnbd
  [ "$failed" = "$f0" ]
}

# mig_cancel_target: a target QEMU stopped (SIGTERM, a clean exit, as when
# a migration is cancelled and its target pod deleted) before the
# migration began; QEMU flushes its disks as it exits, so the target's
# nbdkit sees a FLUSH. The guest runs on at the source without an error.
mig_cancel_target() {
  local dstnode dstnbd dst before k=cancel-target f0=$failed fd
  if [ "$curnode" = a ]; then dstnode=b; else dstnode=a; fi
  n=$((n + 1))
  dst=q$n
  if [ "$MIG_MODE" = shared ]; then
    dstnbd=$curnbd
  else
    dstnbd=$dstnode$n
    check "live-migration: $k: standby nbdkit on node $dstnode" \
      mig_nbdkit "$dstnode" "$dstnbd" standby=true "handoff_timeout=$MIG_HANDOFF" || return
  fi
  check "live-migration: $k: QEMU $dst -incoming on node $dstnode" \
    mig_qemu "$dst" "$dstnbd" -incoming "unix:$work/mig-$dst.sock" || return
  before=$(synced "$cur")
  kill -TERM "${MIG_QPID[$dst]}"
  check "live-migration: $k: the target QEMU exits on SIGTERM before the migration" wait_exit "${MIG_QPID[$dst]}" 60
  fd=${MIG_FD[$dst]}
  exec {fd}>&-
  log "      $k: the target's requests: $(reqs "$work/nbd-$dstnbd.req" "${MIG_CONN[$dst]}" | awk '{ printf "%s ", $3 }')"
  check "live-migration: $k: the guest runs on at the source $cur (running, 10 more files synced)" \
    runs_on "$cur" $((before + 10))
  check "live-migration: $k: no I/O error in $cur's console" no_io_errors "$cur"
  if [ "$MIG_MODE" = standby ]; then
    kill -TERM "${NBD_PID[$dstnbd]}"
    check "live-migration: $k: the standby nbdkit $dstnbd exits cleanly" wait_exit "${NBD_PID[$dstnbd]}" 60
  fi
  [ "$failed" = "$f0" ]
}

# mig_kill_source (standby mode): the source's nbdkit is killed (kill -9)
# as the target's first request after the switch-over arrives (a write
# starts the handoff, a read has the owner commit first), so while the
# source works for the target; the target takes the volume over, once the
# source's lease expired if the source had not released it yet, and the
# guest runs on there.
mig_kill_source() {
  local dstnode dstnbd dst k=kill-source t f0=$failed
  if [ "$curnode" = a ]; then dstnode=b; else dstnode=a; fi
  n=$((n + 1))
  dst=q$n
  dstnbd=$dstnode$n
  check "live-migration: $k: standby nbdkit on node $dstnode" \
    mig_nbdkit "$dstnode" "$dstnbd" standby=true "handoff_timeout=$MIG_HANDOFF" || return
  check "live-migration: $k: QEMU $dst -incoming on node $dstnode" \
    mig_qemu "$dst" "$dstnbd" -incoming "unix:$work/mig-$dst.sock" || return
  # nbdkit's log filter logs a request as it arrives, before the plugin
  # sees it. The source's nbdkit dies as soon as that line is there (or,
  # should it not come, 10 s after the migration completed).
  local seen
  seen=$(grep -cE '^[^ ]+ [^ ]+ connection=[0-9]+ (Read|Write|Flush|Trim|Zero|Cache|Extents) ' "$work/nbd-$dstnbd.req" 2>/dev/null)
  rm -f "$work/migrate-$dst.out"
  MIG_AFTER=$(date +%s.%N)
  migrate "$cur" "$dst" "$k" >/dev/null 2>&1 &
  local mpid=$! end=$((SECONDS + 120))
  until grep -q 'completed$' "$work/migrate-$dst.out" 2>/dev/null; do
    if [ "$SECONDS" -ge "$end" ] || ! kill -0 "$mpid" 2>/dev/null; then break; fi
    sleep 0.01
  done
  end=$((SECONDS + 10))
  while [ "$(grep -cE '^[^ ]+ [^ ]+ connection=[0-9]+ (Read|Write|Flush|Trim|Zero|Cache|Extents) ' "$work/nbd-$dstnbd.req" 2>/dev/null)" -le "${seen:-0}" ]; do
    [ "$SECONDS" -ge "$end" ] && break
    sleep 0.005
  done
  kill -9 "${NBD_PID[$curnbd]}"
  t=$(date +%s.%N)
  wait "${NBD_PID[$curnbd]}" 2>/dev/null
  log "      $k: node $curnode's nbdkit killed (kill -9) $(awk -v a="$MIG_AFTER" -v b="$t" 'BEGIN { printf "%.3f", b - a }')s after the migrate command; $(grep -o 'state [0-9.]* completed$' "$work/migrate-$dst.out" || echo 'the migration had not completed')"
  local rc=0
  wait "$mpid" || rc=$?
  check "live-migration: $k: the migration $cur -> $dst completes" test $rc = 0 || return
  MIG_LOGS+=("$dst")
  mig_stop_qemu "$cur"
  check "live-migration: $k: the guest runs on at $dst (5 files synced there)" \
    progress "$dst" 5 120 || return
  log "      $k: the 5th file after the kill was synced $(secs "$t")s after it; the target took the volume: $(sed -n 's/.*took the ownership lease.* how=//p' "$work/nbdkit-$dstnbd.log" | head -1)"
  log "      $k: the target's first disk request took $(reqs "$work/nbd-$dstnbd.req" "${MIG_CONN[$dst]}" |
    awk -v after="$MIG_AFTER" '$1 > after { printf "%.1f", ($2 - $1) * 1000; exit }') ms (lease_duration=$MIG_LEASE)"
  cur=$dst curnode=$dstnode curnbd=$dstnbd
  [ "$failed" = "$f0" ]
}
