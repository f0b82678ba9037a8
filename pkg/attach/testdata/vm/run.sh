#!/usr/bin/env bash
# Runs pkg/attach's tests as root in a QEMU guest booting Debian's 6.1
# kernel: TestKernelNBD, since the host may lack nbd.ko, and the nbdfuse +
# loop tests with every capability (ext4's online resize needs
# CAP_SYS_RESOURCE, which a container may withhold). The guest has no
# network and no disk. The guest itself (kernel, modules, busybox, the
# host's nbdkit, nbdfuse, util-linux, e2fsprogs and xfsprogs with their
# libraries) is built and cached by test/vm/build.sh; this script adds the
# test binary. The guest runs it with VB_KERNEL_NBD=1 (the kernel NBD
# tests run: they skip on a host without it) and VB_REQUIRE=all (a missing
# capability fails a test instead of skipping it; see internal/testutil).
#
# Needs (Debian): qemu-system-x86 busybox-static cpio, and apt-get download
# for linux-image-6.1.0-*-amd64 (or KDEB=path/to/linux-image.deb).
# Usage: pkg/attach/testdata/vm/run.sh [go test -run regexp]
# Env: WORK (default /tmp/vb-attach-vm), VB_VM_CACHE, KDEB, VM_ACCEL (tcg).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
pkg=$(cd "$here/../.." && pwd)
# shellcheck source=../../../../test/vm/lib.sh
. "$pkg/../../test/vm/lib.sh"
run=${1:-.}
work=${WORK:-/tmp/vb-attach-vm}
command -v qemu-system-x86_64 >/dev/null || { echo "vm: qemu-system-x86_64 missing (apt-get install qemu-system-x86)" >&2; exit 2; }
vm_build
rm -rf "$work/root"
mkdir -p "$work/root/guest"
(cd "$pkg" && CGO_ENABLED=0 go test -c -o "$work/root/attach.test" .)
cat >"$work/root/guest/run" <<RUN
#!/bin/sh
VB_KERNEL_NBD=1 VB_REQUIRE=all /attach.test -test.v -test.count=1 -test.run '$run'
rc=\$?
echo "GUEST_TEST_EXIT=\$rc"
exit \$rc
RUN
chmod +x "$work/root/guest/run"
vm_initrd "$work/root" "$work/initrd.gz"
timeout 600 "$VM_DIR/qemu.sh" "$work/initrd.gz" "" </dev/null | tee "$work/guest.log"
grep -q '^GUEST_TEST_EXIT=0' "$work/guest.log"
