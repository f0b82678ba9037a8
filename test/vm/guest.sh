#!/bin/sh
# Guest side of test/vm/run.sh: /guest/run STEP, one step per boot (the
# guest's /init passes vbstep= from the kernel command line). Runs under
# busybox sh with the host's e2fsprogs. Lines the host reads:
#   CHECK <name> ok|FAIL <seconds> [detail]   one per check
#   SUM <path> <sha256>        a file's checksum (write, clone)
#   NEWSUM <path> <sha256>     a file's checksum after the clone's writes
#   WRITING <batch>            crashwrite: a batch of writes starts
#   SYNCED <path> <sha256>     crashwrite: the file is on disk (sync returned)
#   FILE <path> <sha256>       crashcheck, migwork: a file found at the end
#   MIGWORK <n>                migwork: the workload runs; n files synced so far
# migwork reads the host's "stop" on the console (stdin).
# /dev/vda is the volume (QEMU's NBD client, virtio-blk, cache=none).
step=$1
dev=/dev/vda
mnt=/mnt/vol
failed=0
now() { cut -d' ' -f1 /proc/uptime; }
# check NAME CMD...: runs CMD (output kept for a failure), prints a CHECK line.
check() {
  name=$1
  shift
  if [ $failed -gt 0 ]; then
    echo "CHECK $name FAIL 0.0 skipped after an earlier failure"
    return 1
  fi
  t0=$(now)
  if out=$("$@" 2>&1); then
    echo "CHECK $name ok $(awk -v a="$t0" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}')"
  else
    failed=$((failed + 1))
    echo "CHECK $name FAIL $(awk -v a="$t0" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}') $(echo "$out" | tail -5 | tr '\n' '|')"
    return 1
  fi
}
# sums TAG DIR: prints "TAG path sha256" for every file under $mnt/DIR.
sums() {
  (cd $mnt && find "$2" -type f | sort | xargs -r sha256sum) | while read -r s p; do echo "$1 $p $s"; done
}
fsck_clean() { e2fsck -fn $dev; }
mkdir -p $mnt

case $step in
write)
  # Scenario 1: a fresh volume; mkfs, files of several sizes, sync.
  check "mkfs.ext4 /dev/vda" mkfs.ext4 -q -F $dev
  check "mount" mount -t ext4 $dev $mnt
  write_files() {
    mkdir -p $mnt/data/sub/deeper
    i=0
    for kib in 1 4 17 64 300 1024 4096 12288; do
      i=$((i + 1))
      dd if=/dev/urandom of=$mnt/data/f$i bs=1k count=$kib 2>/dev/null || return 1
    done
    for j in 1 2 3 4 5; do echo "small file $j $(date)" >$mnt/data/sub/deeper/s$j || return 1; done
    sync
  }
  check "write 13 files (17 MiB) + sync" write_files
  [ $failed = 0 ] && sums SUM data
  check "umount" umount $mnt
  check "e2fsck -fn" fsck_clean
  ;;
clone)
  # Scenario 2: the clone of the volume has the files; then it diverges.
  check "mount the clone" mount -t ext4 $dev $mnt
  [ $failed = 0 ] && sums SUM data
  diverge() {
    mkdir -p $mnt/clone-only || return 1
    for j in 1 2 3; do dd if=/dev/urandom of=$mnt/clone-only/c$j bs=64k count=$((j * 8)) 2>/dev/null || return 1; done
    dd if=/dev/urandom of=$mnt/data/f7 bs=1k count=4096 conv=notrunc 2>/dev/null || return 1
    rm $mnt/data/f2 || return 1
    sync
  }
  check "clone writes: 3 new files, overwrite f7, delete f2" diverge
  [ $failed = 0 ] && sums NEWSUM data && sums NEWSUM clone-only
  check "umount" umount $mnt
  check "e2fsck -fn" fsck_clean
  ;;
crashwrite)
  # Scenario 3: write until killed; after each sync, report what is durable.
  check "mkfs.ext4 /dev/vda" mkfs.ext4 -q -F $dev
  check "mount" mount -t ext4 $dev $mnt
  [ $failed = 0 ] || exit 1
  mkdir -p $mnt/w
  # Meanwhile a stream of O_DIRECT writes, never synced, so that writes are
  # in flight between the guest, QEMU and nbdkit whenever the kill comes.
  dd if=/dev/urandom of=/tmp/rnd bs=64k count=16 2>/dev/null
  (while :; do dd if=/tmp/rnd of=$mnt/stream bs=64k oflag=direct conv=notrunc 2>/dev/null; done) &
  n=0
  b=0
  while [ $n -lt 1500 ]; do
    b=$((b + 1))
    echo "WRITING $b"
    names=
    for j in 1 2 3 4 5 6; do
      n=$((n + 1))
      dd if=/dev/urandom of=$mnt/w/f$n bs=16k count=$((1 + n % 8)) 2>/dev/null
      names="$names w/f$n"
    done
    list=$(cd $mnt && sha256sum $names)
    sync
    echo "$list" | while read -r s p; do echo "SYNCED $p $s"; done
  done
  echo "crashwrite: not killed after $n files"
  exit 1
  ;;
crashcheck)
  # Scenario 3, after the crash: mounting replays the journal, as a
  # rebooted VM would; then every file's checksum and a read-only fsck.
  check "mount after the crash (journal recovery)" mount -t ext4 $dev $mnt
  [ $failed = 0 ] && sums FILE w
  check "umount" umount $mnt
  check "e2fsck -fn after recovery" fsck_clean
  ;;
migwork)
  # Scenario 6 (live migration): write, fsync and sync files while the host
  # migrates the VM back and forth between two QEMU processes, until the
  # host writes "stop" on the console; then check the filesystem from a
  # cold cache and list every file with its checksum.
  check "mkfs.ext4 /dev/vda" mkfs.ext4 -q -F $dev
  check "mount" mount -t ext4 $dev $mnt
  [ $failed = 0 ] || exit 1
  mkdir -p $mnt/m
  exec 3<&0
  (read -r _ <&3; touch /tmp/stop) &
  n=0
  errs=0
  echo "MIGWORK 0"
  while [ ! -e /tmp/stop ]; do
    n=$((n + 1))
    if dd if=/dev/urandom of=$mnt/m/f$n bs=4k count=$((1 + n % 16)) conv=fsync 2>/dev/null; then
      s=$(sha256sum $mnt/m/f$n | cut -d' ' -f1)
      sync
      echo "SYNCED m/f$n $s"
    else
      errs=$((errs + 1))
      echo "WRITE-FAILED m/f$n"
    fi
    [ $((n % 10)) = 0 ] && echo "MIGWORK $n"
  done
  echo "MIGWORK stopped after $n files"
  check "the workload's writes all succeeded" test $errs = 0
  check "umount" umount $mnt
  echo 3 >/proc/sys/vm/drop_caches
  check "e2fsck -fn after the migrations" fsck_clean
  check "mount again (cold cache)" mount -t ext4 -o ro $dev $mnt
  [ $failed = 0 ] && sums FILE m
  check "umount" umount $mnt
  check "the kernel logged no I/O or ext4 error" sh -c "! dmesg | grep -E 'I/O error|EXT4-fs error|Buffer I/O'"
  ;;
knbd)
  # Scenario 4: the kernel NBD client against the host's nbdkit, then the
  # CSI node plugin inside the guest.
  addr=$(sed -n 's/.*vbaddr=\([^ ]*\).*/\1/p' /proc/cmdline)
  /guest/vmguest knbd "$addr" || failed=1
  /guest/vmguest csi /guest/node /usr/lib/viperblock/nbdkit-viperblock-plugin.so || failed=1
  ;;
*)
  echo "guest: unknown step '$step'"
  exit 2
  ;;
esac
[ $failed = 0 ]
