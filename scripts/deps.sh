#!/usr/bin/env bash
# Installs what building, testing and the demo need, only where it is
# missing: Debian packages (apt-get update runs at most once) and Go tools
# from the module proxy. Idempotent; safe to run on every make.
set -euo pipefail

need_apt=()
have() { command -v "$1" >/dev/null 2>&1; }
pkg_for() { # command package
  have "$1" || need_apt+=("$2")
}
pkg_for nbdkit nbdkit
pkg_for nbdinfo libnbd-bin
pkg_for nbdcopy libnbd-bin
pkg_for nbdfuse nbdfuse
pkg_for qemu-img qemu-utils
pkg_for qemu-io qemu-utils
pkg_for fio fio
pkg_for mkfs.ext4 e2fsprogs
pkg_for mkfs.xfs xfsprogs
pkg_for losetup mount
pkg_for fusermount3 fuse3
pkg_for gcc gcc
pkg_for modprobe kmod
pkg_for qemu-system-x86_64 qemu-system-x86
pkg_for cpio cpio
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "ok installed" || need_apt+=(busybox-static)
[ -f /usr/include/nbdkit-plugin.h ] || need_apt+=(nbdkit-plugin-dev)

if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "deps: missing packages ${need_apt[*]}; run as root or install them" >&2
    exit 1
  fi
  echo "deps: installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

gobin="$(go env GOPATH)/bin"
if [ ! -x "$gobin/versitygw" ] && ! have versitygw; then
  echo "deps: installing versitygw (S3 server for tests)"
  go install github.com/versity/versitygw/cmd/versitygw@latest
fi
if [ ! -x "$gobin/staticcheck" ] && ! have staticcheck; then
  echo "deps: installing staticcheck"
  go install honnef.co/go/tools/cmd/staticcheck@latest || echo "deps: staticcheck not installable; preflight will skip it"
fi
