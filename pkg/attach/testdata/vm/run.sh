#!/usr/bin/env bash
# Runs pkg/attach's tests as root in a QEMU guest booting Debian's 6.1
# kernel: TestKernelNBD, since the host may lack nbd.ko, and the nbdfuse +
# loop tests with every capability (ext4's online resize needs
# CAP_SYS_RESOURCE, which a container may withhold). The guest has no
# network and no disk; the host's nbdkit, nbdfuse, losetup, e2fsprogs and
# xfsprogs are copied in with their libraries, when installed.
#
# Needs (Debian): qemu-system-x86 busybox-static cpio, and apt-get download
# for linux-image-6.1.0-*-amd64 (or KDEB=path/to/linux-image.deb).
# Usage: pkg/attach/testdata/vm/run.sh [go test -run regexp]
# Env: WORK (default /tmp/vb-attach-vm), KDEB, ACCEL (default tcg).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
pkg=$(cd "$here/../.." && pwd)
run=${1:-.}
work=${WORK:-/tmp/vb-attach-vm}
for c in qemu-system-x86_64 cpio gzip; do
  command -v $c >/dev/null || { echo "vm: $c missing (apt-get install qemu-system-x86 cpio)" >&2; exit 2; }
done
[ -x /bin/busybox ] || { echo "vm: /bin/busybox missing (apt-get install busybox-static)" >&2; exit 2; }
mkdir -p "$work"
cd "$work"
kdeb=${KDEB:-}
if [ -z "$kdeb" ]; then
  kdeb=$(ls linux-image-6.1.0-*-amd64_*.deb 2>/dev/null | sort -V | tail -1 || true)
fi
if [ -z "$kdeb" ]; then
  pkgname=$(apt-cache search '^linux-image-6\.1\.0-[0-9]+-amd64$' | awk '{print $1}' | sort -V | tail -1)
  [ -n "$pkgname" ] || { echo "vm: no linux-image-6.1.0-*-amd64 in apt (apt-get update?)" >&2; exit 2; }
  apt-get download "$pkgname"
  kdeb=$(ls linux-image-6.1.0-*-amd64_*.deb | sort -V | tail -1)
fi
rm -rf k root
mkdir -p k root/bin root/proc root/sys root/dev root/tmp root/lib/modules root/etc
dpkg-deb -x "$kdeb" k
kver=$(ls k/lib/modules | head -1)
moddir=k/lib/modules/$kver
cp k/boot/vmlinuz-"$kver" vmlinuz

# The modules, dependencies first (the .deb ships no modules.dep: read each
# module's depends= from its .modinfo). crc32c first: ext4 and xfs ask the
# crypto API for it, and the guest has no modprobe.
kpath() { find "$moddir" -name "$1.ko" | head -1; }
deps() {
  local d
  for d in $(grep -a -o 'depends=[^[:cntrl:]]*' "$1" | head -1 | cut -d= -f2 | tr , ' '); do
    deps "$(kpath "$d")"
  done
  echo "$1"
}
: >root/lib/modules/order
for m in $(for n in crc32c_generic nbd loop fuse ext4 xfs; do p=$(kpath $n); [ -n "$p" ] && deps "$p"; done | awk '!seen[$0]++'); do
  cp "$m" root/lib/modules/
  basename "$m" >>root/lib/modules/order
done

# Host tools and their shared libraries.
copy() { # path...
  local f
  for f in "$@"; do
    [ -e "$f" ] || continue
    mkdir -p "root$(dirname "$f")"
    cp -L "$f" "root$f"
  done
}
for b in nbdkit nbdfuse fusermount3 losetup mke2fs mkfs.ext4 e2fsck resize2fs mkfs.xfs xfs_growfs xfs_repair; do
  p=$(command -v $b || true)
  [ -n "$p" ] || continue
  copy "$p" $(ldd "$p" 2>/dev/null | grep -o '/[^ ]*')
done
if [ -d /usr/lib/x86_64-linux-gnu/nbdkit ]; then
  mkdir -p root/usr/lib/x86_64-linux-gnu
  cp -a /usr/lib/x86_64-linux-gnu/nbdkit root/usr/lib/x86_64-linux-gnu/
  for so in root/usr/lib/x86_64-linux-gnu/nbdkit/plugins/nbdkit-{memory,file}-plugin.so; do
    [ -e "$so" ] && copy $(ldd "$so" 2>/dev/null | grep -o '/[^ ]*')
  done
fi
copy /etc/mke2fs.conf
ln -sf /proc/self/mounts root/etc/mtab

cp /bin/busybox root/bin/busybox
(cd "$pkg" && CGO_ENABLED=0 go test -c -o "$work/root/attach.test" .)
cat >root/init <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev; mount -t tmpfs tmp /tmp
ip link set lo up
for m in \$(cat /lib/modules/order); do insmod /lib/modules/\$m || echo "insmod \$m failed"; done
cd /tmp
/attach.test -test.v -test.count=1 -test.run '$run'
echo "GUEST_TEST_EXIT=\$?"
poweroff -f
INIT
chmod +x root/init
(cd root && find . | cpio -o -H newc --quiet | gzip -1) >initrd.gz
timeout 600 qemu-system-x86_64 -accel "${ACCEL:-tcg}" -m 1024 -smp 2 -nographic -no-reboot \
  -kernel vmlinuz -initrd initrd.gz -append "console=ttyS0 quiet panic=-1" </dev/null | tee guest.log
grep -q '^GUEST_TEST_EXIT=0' guest.log
