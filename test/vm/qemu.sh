#!/usr/bin/env bash
# qemu.sh INITRD APPEND [QEMU ARGS...]: boots the VM test guest: the kernel
# $VM_KERNEL (from lib.sh's vm_build), INITRD (from vm_initrd), APPEND added
# to the kernel command line (e.g. vbstep=NAME). The serial console is on
# stdin and stdout. It execs QEMU, so `qemu.sh ... &` makes $! QEMU's pid
# and `timeout N qemu.sh ...` times QEMU itself out. No NIC unless ARGS
# add one (lib.sh's vm_net_args). Env: VM_MEM (MiB, default 1024), VM_SMP
# (default 2), VM_ACCEL (default tcg: stock kernels do not boot on this
# machine's nested KVM).
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: qemu.sh INITRD APPEND [QEMU ARGS...]" >&2; exit 2; }
: "${VM_KERNEL:?VM_KERNEL is not set: call vm_build (test/vm/lib.sh) first}"
initrd=$1 append=$2
shift 2
nic=(-nic none)
case " $* " in *" -netdev "* | *" -nic "*) nic=() ;; esac
# no_timer_check: on a busy host TCG runs the guest so slowly that the
# kernel's boot-time check of the IO-APIC timer can fail, and it panics
# ("IO-APIC + timer doesn't work"); the timer itself works.
exec qemu-system-x86_64 -accel "${VM_ACCEL:-tcg}" -m "${VM_MEM:-1024}" -smp "${VM_SMP:-2}" \
  -nographic -no-reboot "${nic[@]}" -kernel "$VM_KERNEL" -initrd "$initrd" \
  -append "console=ttyS0 quiet panic=-1 no_timer_check $append" "$@"
