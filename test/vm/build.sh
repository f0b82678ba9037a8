#!/usr/bin/env bash
# Builds the guest that the VM tests boot under QEMU into a cache directory
# (nothing is written to the repository) and prints shell assignments for
# it:
#
#   eval "$(test/vm/build.sh)"   # VM_KERNEL, VM_BASE (initramfs), VM_KVER
#
# (test/vm/lib.sh's vm_build does that.) The guest is Debian's 6.1 kernel
# from the linux-image-6.1.0-*-amd64 package, which ships nbd, virtio, loop,
# fuse, ext4 and xfs as modules, and a base initramfs holding:
#   - busybox-static, and test/vm/init as /init;
#   - those modules, dependencies first (the .deb has no modules.dep, so each
#     module's depends= is read from its .modinfo; crc32c first since ext4
#     and xfs ask the crypto API for it and the guest has no modprobe);
#   - host tools with their shared libraries (ldd): e2fsprogs, because
#     busybox's mke2fs makes ext2 without a journal and busybox has no
#     e2fsck, and the crash test needs ext4's journal and a real fsck;
#     util-linux's mount, blkid, losetup, blockdev, fsck, findmnt, which the
#     CSI node service's mount-utils calls with options busybox lacks
#     (blkid -p); xfsprogs; nbdkit with its plugins and filters; nbdfuse.
# Per-run files (test binaries, scripts, the viperblock plugin) go into a
# second archive that lib.sh's vm_initrd appends.
#
# The result is cached under $VB_VM_CACHE (default /var/cache/viperblock-vm)
# and rebuilt only when an input changes: this script, init, the kernel
# .deb, or the content of any host file copied in. The kernel .deb is
# $KDEB if set, else the newest one already in the cache, else the newest
# linux-image-6.1.0-*-amd64 that apt knows, fetched with apt-get download.
#
# Needs (Debian): qemu-system-x86 busybox-static cpio e2fsprogs (plus, for
# the tests that use them: mount util-linux xfsprogs nbdkit nbdfuse fuse3).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
cache=${VB_VM_CACHE:-/var/cache/viperblock-vm}
log() { echo "vm-build: $*" >&2; }
die() { log "$*"; exit 2; }

for c in cpio gzip dpkg-deb ldd sha256sum flock; do
  command -v $c >/dev/null || die "$c missing"
done
[ -x /bin/busybox ] || die "/bin/busybox missing (apt-get install busybox-static)"
command -v mkfs.ext4 >/dev/null || die "mkfs.ext4 missing (apt-get install e2fsprogs)"
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9

# The kernel package.
kdeb=${KDEB:-}
if [ -z "$kdeb" ]; then
  kdeb=$(ls "$cache"/linux-image-6.1.0-*-amd64_*.deb 2>/dev/null | sort -V | tail -1 || true)
fi
if [ -z "$kdeb" ]; then
  find_pkg() { apt-cache search '^linux-image-6\.1\.0-[0-9]+-amd64$' | awk '{print $1}' | sort -V | tail -1; }
  pkg=$(find_pkg)
  if [ -z "$pkg" ] && [ "$(id -u)" = 0 ]; then
    log "apt-get update (no linux-image-6.1.0-*-amd64 in apt's lists)"
    apt-get update -qq >&2
    pkg=$(find_pkg)
  fi
  [ -n "$pkg" ] || die "no linux-image-6.1.0-*-amd64 package in apt (run apt-get update, or set KDEB=path/to/linux-image.deb)"
  log "downloading $pkg"
  (cd "$cache" && apt-get download -q "$pkg" >&2 2>&1) || die "apt-get download $pkg failed"
  kdeb=$(ls "$cache"/linux-image-6.1.0-*-amd64_*.deb | sort -V | tail -1)
fi

modules="crc32c_generic virtio_pci virtio_blk virtio_net nbd loop fuse ext4 xfs"
tools="mke2fs mkfs.ext4 e2fsck fsck.ext4 resize2fs tune2fs dumpe2fs debugfs
  mount umount blkid losetup blockdev fsck findmnt
  mkfs.xfs xfs_growfs xfs_repair nbdkit nbdfuse fusermount3"
nbdkitlib=/usr/lib/x86_64-linux-gnu/nbdkit

# Every host file that goes in, for the cache key and the copy.
files=(/bin/busybox /etc/mke2fs.conf)
for t in $tools; do
  p=$(command -v "$t" || true)
  [ -n "$p" ] && files+=("$p")
done
if [ -d "$nbdkitlib" ]; then
  while IFS= read -r f; do files+=("$f"); done < <(find "$nbdkitlib" -type f | LC_ALL=C sort)
fi
dyn=()
for f in "${files[@]}"; do
  case $f in "$nbdkitlib"/*) case $f in *-memory-plugin.so | *-file-plugin.so) ;; *) continue ;; esac ;; esac
  dyn+=("$f")
done
mapfile -t libs < <(ldd "${dyn[@]}" 2>/dev/null | grep $'^\t' | grep -o '/[^ ]*' | LC_ALL=C sort -u)

key=$( {
  cat "$here/build.sh" "$here/lib.sh" "$here/init"
  echo "$(basename "$kdeb") $(stat -c %s "$kdeb")" "$modules"
  sha256sum "${files[@]}" "${libs[@]}"
} | sha256sum | cut -c1-16)
base=$cache/base-$key.cpio.gz
if [ -s "$base" ] && [ -s "$cache/env-$key" ]; then
  cat "$cache/env-$key"
  exit 0
fi

log "building the guest ($(basename "$kdeb"), key $key)"
t0=$(date +%s)
tmp=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/k" "$tmp/root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,mnt,root,etc,lib/modules}
dpkg-deb -x "$kdeb" "$tmp/k"
kver=$(ls "$tmp/k/lib/modules" | head -1)
moddir=$tmp/k/lib/modules/$kver
[ -f "$tmp/k/boot/vmlinuz-$kver" ] || die "no vmlinuz-$kver in $kdeb"

kpath() { find "$moddir" -name "$1.ko" | head -1; }
deps() {
  local d
  for d in $(grep -a -o 'depends=[^[:cntrl:]]*' "$1" | head -1 | cut -d= -f2 | tr , ' '); do
    deps "$(kpath "$d")"
  done
  echo "$1"
}
: >"$tmp/root/lib/modules/order"
for m in $modules; do
  p=$(kpath "$m")
  [ -n "$p" ] || die "module $m not in $kdeb"
  deps "$p"
done | awk '!seen[$0]++' | while read -r m; do
  cp "$m" "$tmp/root/lib/modules/"
  basename "$m" >>"$tmp/root/lib/modules/order"
done

cp /bin/busybox "$tmp/root/bin/busybox"
for f in "${files[@]:1}" "${libs[@]}"; do
  mkdir -p "$tmp/root$(dirname "$f")"
  cp -L "$f" "$tmp/root$f"
done
ln -sf /proc/self/mounts "$tmp/root/etc/mtab"
echo "root:x:0:0:root:/root:/bin/sh" >"$tmp/root/etc/passwd"
echo "root:x:0:" >"$tmp/root/etc/group"
install -m 0755 "$here/init" "$tmp/root/init"

vm_pack "$tmp/root" "$tmp/base.cpio.gz"
cp "$tmp/k/boot/vmlinuz-$kver" "$cache/vmlinuz-$kver"
mv "$tmp/base.cpio.gz" "$base"
printf 'VM_KERNEL=%q\nVM_BASE=%q\nVM_KVER=%q\n' "$cache/vmlinuz-$kver" "$base" "$kver" >"$cache/env-$key"
# Older builds go; the kernel .deb stays (it is the expensive input).
for old in "$cache"/base-*.cpio.gz "$cache"/env-*; do
  case $old in "$base" | "$cache/env-$key") ;; *) rm -f "$old" ;; esac
done
for old in "$cache"/vmlinuz-*; do
  [ "$old" = "$cache/vmlinuz-$kver" ] || rm -f "$old"
done
log "built in $(($(date +%s) - t0))s: $(du -h "$base" | cut -f1) initramfs, $(wc -l <"$tmp/root/lib/modules/order") modules"
cat "$cache/env-$key"
