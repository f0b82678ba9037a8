# shellcheck shell=bash
# Helpers shared by the QEMU guest harnesses (test/vm/run.sh and
# pkg/attach/testdata/vm/run.sh). Sourced, never run.
#
#   vm_build                  build or find the cached guest: exports VM_KERNEL, VM_BASE, VM_KVER
#   vm_copy ROOT FILE...      copy host files and their shared libraries into ROOT, same paths
#   vm_initrd ROOT OUT        OUT = the base initramfs + ROOT packed as a second cpio archive
#   $VM_DIR/qemu.sh INITRD APPEND ARGS...   boot the guest (see qemu.sh)
#
# The guest's /init (test/vm/init) loads the modules, brings up eth0 when
# the VM has a NIC (10.0.2.15, the host is 10.0.2.2), runs
# `/guest/run STEP` from ROOT, where STEP is vbstep= on the kernel command
# line, prints VM_EXIT=<status> and powers off.

VM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

vm_build() {
  local out
  out=$("$VM_DIR/build.sh") || return
  eval "$out"
  export VM_KERNEL VM_BASE VM_KVER
}

vm_copy() {
  local root=$1 f
  shift
  for f in "$@" $(ldd "$@" 2>/dev/null | grep $'^\t' | grep -o '/[^ ]*' | sort -u); do
    [ -e "$root$f" ] && continue
    mkdir -p "$root$(dirname "$f")"
    cp -L "$f" "$root$f"
  done
}

# vm_pack DIR OUT: DIR's tree as a gzip'd newc cpio archive owned by root.
vm_pack() {
  (cd "$1" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -1 >"$2"
}

# vm_initrd ROOT OUT: the kernel unpacks concatenated archives in order, so
# the cached base stays as it is and only the per-run files are packed.
vm_initrd() {
  vm_pack "$1" "$2.overlay"
  cat "$VM_BASE" "$2.overlay" >"$2"
  rm -f "$2.overlay"
}

# vm_net_args: QEMU user networking, the guest reaches the host's loopback
# at 10.0.2.2; no option ROM, so no iPXE delay at boot.
vm_net_args() { echo "-netdev user,id=n0 -device virtio-net-pci,netdev=n0,romfile="; }
