#!/usr/bin/env bash
# Installs what building, testing and the demo need, only where it is
# missing: Debian packages (apt-get update runs at most once) and Go tools
# from the module proxy. Idempotent; safe to run on every make.
# `deps.sh go-tools` installs only the Go tools (no root needed).
set -euo pipefail
only_go_tools=false
[ "${1:-}" = go-tools ] && only_go_tools=true

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
pkg_for jq jq
pkg_for zsh zsh
pkg_for fish fish
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep "ok installed" >/dev/null || need_apt+=(busybox-static)
[ -f /usr/include/nbdkit-plugin.h ] || need_apt+=(nbdkit-plugin-dev)

if [ ${#need_apt[@]} -gt 0 ] && ! $only_go_tools; then
  if [ "$(id -u)" != 0 ]; then
    echo "deps: missing packages ${need_apt[*]}; run as root or install them" >&2
    exit 1
  fi
  echo "deps: installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# Go tools, pinned: a newer release never changes what a test run means.
VERSITYGW_VERSION=v1.8.0
STATICCHECK_VERSION=v0.8.2
# helm: the chart's lint and template tests and the e2e's install; promtool:
# the alerting rules' and the dashboard's tests (test/e2e). Both build from
# their modules with go install (a few minutes the first time).
HELM_VERSION=v4.3.2
PROMTOOL_VERSION=v0.316.0
gobin="$(go env GOPATH)/bin"
# go_tool BIN PACKAGE VERSION: installs PACKAGE@VERSION unless $gobin/BIN is
# already that version.
go_tool() {
  local bin=$1 pkg=$2 ver=$3
  if [ -x "$gobin/$bin" ] && go version -m "$gobin/$bin" 2>/dev/null | awk '$1 == "mod" { print $3 }' | grep -x "$ver" >/dev/null; then
    return 0
  fi
  echo "deps: installing $pkg@$ver"
  go install "$pkg@$ver"
}
go_tool versitygw github.com/versity/versitygw/cmd/versitygw "$VERSITYGW_VERSION"
go_tool staticcheck honnef.co/go/tools/cmd/staticcheck "$STATICCHECK_VERSION"
go_tool helm helm.sh/helm/v4/cmd/helm "$HELM_VERSION"
go_tool promtool github.com/prometheus/prometheus/cmd/promtool "$PROMTOOL_VERSION"
