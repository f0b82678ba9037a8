#!/usr/bin/env bash
# csi-sanity as deployed: the upstream csi-sanity command against
# bin/controller --standalone and bin/node running as two separate
# processes, each on its own socket, as the sidecars and the kubelet see
# them (test/sanity runs the same suite in-process, on one socket). The
# node attaches volumes with nbdfuse + loop; the store is a file store in a
# temporary directory.
#
# csi-sanity is built from the module proxy at the version go.mod pins,
# once, into $VB_SANITY_CACHE (default /var/cache/viperblock-sanity).
# Run by `make sanity` after `make build`; needs root, /dev/fuse, nbdkit,
# nbdfuse, mkfs.ext4. Starts and stops its processes itself, and removes
# every mount, loop device and process it made, whatever the outcome.
# Exit status: 0 only if csi-sanity reports 0 failed specs.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
GO="${GO:-go}"
controller="$root/bin/controller"
node="$root/bin/node"
plugin="$root/lib/nbdkit-viperblock-plugin.so"

die() { printf 'sanity-deployed: %s\n' "$*" >&2; exit 1; }

for f in "$controller" "$node" "$plugin"; do
  [ -e "$f" ] || die "$f is missing: run 'make build' first"
done
[ "$(id -u)" = 0 ] || die "needs root (mounts, loop devices)"
[ -e /dev/fuse ] || die "needs /dev/fuse"
for t in nbdkit nbdfuse fusermount3 losetup mkfs.ext4 mount umount; do
  command -v "$t" >/dev/null || die "$t is not installed: run 'make deps'"
done

# csi-sanity at go.mod's csi-test version, built inside this module so that
# go.sum pins every dependency.
ver="$($GO list -m -f '{{.Version}}' github.com/kubernetes-csi/csi-test/v5)"
cache="${VB_SANITY_CACHE:-/var/cache/viperblock-sanity}"
sanity="$cache/csi-sanity-$ver"
if [ ! -x "$sanity" ]; then
  echo "== building csi-sanity $ver into $cache"
  mkdir -p "$cache"
  $GO build -o "$sanity.tmp" github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity
  mv "$sanity.tmp" "$sanity"
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/viperblock-sanity.XXXXXX")"
ctl_pid="" node_pid=""

# stop ends a process this script started and waits for it.
stop() {
  local pid="$1"
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# pids_from prints the "pid" fields of the JSON state files and the
# pidfiles under the work directory: the nbdkit and nbdfuse processes the
# node plugin started for volumes csi-sanity left staged.
pids_from() {
  find "$work" -name nbdkit.pid -exec cat {} + 2>/dev/null || true
  find "$work/attach" -name state.json -exec sed -n 's/^ *"pid": *\([0-9][0-9]*\).*/\1/p' {} + 2>/dev/null || true
}

cleanup() {
  local rc=$?
  set +e
  stop "$ctl_pid"
  stop "$node_pid"
  # Whatever is still staged or published: unmount (deepest first), detach
  # loop devices backed by our files, unmount nbdfuse, end its processes.
  awk -v w="$work" 'index($2, w) == 1 { print $2 }' /proc/self/mounts | sort -r | while read -r m; do
    case "$m" in */attach/*) ;; *) umount -l "$m" ;; esac
  done
  losetup -a 2>/dev/null | awk -F: -v w="$work" 'index($0, w) { print $1 }' | while read -r dev; do losetup -d "$dev"; done
  awk -v w="$work" 'index($2, w) == 1 { print $2 }' /proc/self/mounts | sort -r | while read -r m; do
    fusermount3 -u -z "$m" 2>/dev/null || umount -l "$m"
  done
  for pid in $(pids_from | sort -u); do
    if tr '\0' ' ' </proc/"$pid"/cmdline 2>/dev/null | grep -e "$work" -e nbdfuse >/dev/null; then
      kill -TERM "$pid" 2>/dev/null
    fi
  done
  if [ "$rc" != 0 ]; then
    for l in "$work"/controller.log "$work"/node.log; do
      echo "==== last lines of $(basename "$l")"
      tail -n 40 "$l" 2>/dev/null
    done
  fi
  if [ -n "${VB_DEBUG:-}" ]; then # keep the logs
    mkdir -p "$VB_DEBUG" && cp "$work"/*.log "$VB_DEBUG"/ 2>/dev/null
  fi
  sleep 0.5
  rm -rf "$work" 2>/dev/null || echo "sanity-deployed: could not remove $work entirely" >&2
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$work/store" "$work/staging" "$work/target"
store="default=file://$work/store"

"$controller" --standalone --endpoint "unix://$work/controller.sock" --store "$store" \
  --node-check=store --metrics-address=0 --health-address=0 --v=2 >"$work/controller.log" 2>&1 &
ctl_pid=$!
"$node" --endpoint "unix://$work/node.sock" --store "$store" --node-id sanity-deployed \
  --state-dir "$work/state" --wal-dir "$work/wal" --attach-dir "$work/attach" --attacher nbdfuse \
  --plugin "$plugin" --http-address=0 --v=2 >"$work/node.log" 2>&1 &
node_pid=$!
for _ in $(seq 100); do
  [ -S "$work/controller.sock" ] && [ -S "$work/node.sock" ] && break
  kill -0 "$ctl_pid" 2>/dev/null || die "the controller exited at start-up"
  kill -0 "$node_pid" 2>/dev/null || die "the node plugin exited at start-up"
  sleep 0.1
done
[ -S "$work/controller.sock" ] && [ -S "$work/node.sock" ] || die "the sockets did not appear"
echo "== csi-sanity $ver: controller pid $ctl_pid, node pid $node_pid, work $work"

printf 'store: default\n' >"$work/params.yaml"
set +e
"$sanity" \
  --csi.endpoint="unix://$work/node.sock" \
  --csi.controllerendpoint="unix://$work/controller.sock" \
  --csi.stagingdir="$work/staging/vol" \
  --csi.mountdir="$work/target/vol" \
  --csi.testvolumesize=$((256 << 20)) \
  --csi.testvolumeexpandsize=$((512 << 20)) \
  --csi.testvolumeparameters="$work/params.yaml" \
  --ginkgo.timeout=40m --ginkgo.no-color \
  ${SANITY_FOCUS:+--ginkgo.focus="$SANITY_FOCUS"} 2>&1 | tee "$work/sanity.log"
rc=${PIPESTATUS[0]}
set -e

# Ginkgo's summary line: passed, failed, pending and skipped specs.
summary="$(grep -E '[0-9]+ Passed \| [0-9]+ Failed' "$work/sanity.log" | tail -1 || true)"
echo "== csi-sanity as deployed: ${summary:-no summary}"
if [ "$rc" != 0 ] || ! grep -qE '\| 0 Failed \|' <<<"$summary"; then
  die "csi-sanity failed (exit status $rc)"
fi
