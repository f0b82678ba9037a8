#!/usr/bin/env bash
# End-to-end test of Viperblock CSI on a real single-node Kubernetes, built
# and started on this machine (as root; Debian 12 with Go):
#
#   test/e2e/run.sh            # or: make e2e
#
# 1. builds Kubernetes and the CSI sidecars from the Go module proxy, once
#    per version, into $VB_E2E_CACHE (default /var/cache/viperblock-e2e);
# 2. starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
#    containerd and kubelet as host processes, imports locally built pause
#    and busybox images, installs the snapshot CRDs and snapshot-controller;
# 3. when make build's outputs exist, deploys the driver as a user does:
#    the driver's image made from the Dockerfile's recipe and the sidecar
#    images imported into containerd, versitygw as the S3 store, and
#    `kubectl apply -k` of the production overlay with only the image, the
#    store URL and the credentials changed (driver.sh, image.sh); then runs
#    the driver scenarios (scenarios.sh, scenarios_shipped.sh); otherwise
#    only the cluster smoke test;
# 4. tears everything down, on success, failure or interrupt.
#
# The cluster uses the host's /var/lib/kubelet, /run/viperblock and
# /var/lib/viperblock (the paths the manifests mount) and removes them at
# teardown: run it on a machine that is not a Kubernetes node.
#
# Prints timings per step and ends with "N passed, N failed[, N skipped]".
#
# Environment:
#   VB_E2E_CACHE          build cache dir (outside the repo)
#   VB_E2E_RUN_DIR        run dir (default /tmp/vb-e2e; wiped at start)
#   VB_E2E_KEEP=1         leave the cluster running at the end (teardown:
#                         test/e2e/run.sh --down)
#   VB_E2E_REQUIRE_DRIVER=1  fail instead of skipping the driver scenarios
#                         when the driver binaries are missing
#   VB_E2E_SCENARIOS      regexp: run only the driver scenarios it matches
#   VB_E2E_STORE_PORT     versitygw's port on the pod network's gateway
# shellcheck source-path=SCRIPTDIR
set -uo pipefail

E2E_T0=$(date +%s.%N)
export E2E_T0
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
R=${VB_E2E_RUN_DIR:-/tmp/vb-e2e}
# shellcheck source=cluster.sh
. "$E2E_DIR/cluster.sh"
# shellcheck source=driver.sh
. "$E2E_DIR/driver.sh"
# shellcheck source=image.sh
. "$E2E_DIR/image.sh"
# shellcheck source=scenarios.sh
. "$E2E_DIR/scenarios.sh"
# shellcheck source=scenarios_shipped.sh
. "$E2E_DIR/scenarios_shipped.sh"

[ "$(id -u)" = 0 ] || die "run as root: the cluster mounts, runs containers and loads images"

# (device-plugins/ alone is what any kubelet leaves, whatever its root dir.)
if [ -d /var/lib/kubelet ] && [ ! -e /var/lib/kubelet/.vb-e2e ] && [ -n "$(ls -A /var/lib/kubelet | grep -vx device-plugins)" ]; then
  die "/var/lib/kubelet belongs to another kubelet: the e2e cluster uses (and removes) it"
fi

mkdir -p "$STATE"
exec 8>"$STATE/lock"
flock -n 8 || die "another e2e run holds $STATE/lock"

teardown() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "${VB_E2E_KEEP:-0}" = 1 ] && [ "${1:-}" != force ]; then
    log "VB_E2E_KEEP=1: cluster left running; KUBECONFIG=$R/pki/admin.kubeconfig; stop it with $0 --down"
    return $rc
  fi
  local s; s=$(date +%s.%N)
  log "== teardown"
  cluster_down
  local leftover
  leftover=$(awk -v r="$R" 'index($2, r) == 1 {print $2}' /proc/mounts)
  [ -z "$leftover" ] || log "WARNING: mounts left: $leftover"
  if [ -d "$R/log" ]; then
    local keep=$CACHE_ROOT/last-run-logs
    rm -rf "$keep"; mkdir -p "$keep"; cp -r "$R/log/." "$keep/" 2>/dev/null
    log "logs kept in $keep"
  fi
  [ -z "$leftover" ] && rm -rf "$R"
  rm -f "$STATE/lock"; rmdir "$STATE" 2>/dev/null
  STEP_TIMES+=("$(printf '%-34s %7ss' teardown "$(awk -v a="$s" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')")")
  log "== teardown done"
  return $rc
}

if [ "${1:-}" = --down ]; then
  teardown force
  exit 0
fi

# A run killed before its teardown (SIGKILL, a lost machine) leaves its
# processes and mounts: clear them first.
if [ -e "$R" ] || [ -d "$CG" ]; then
  log "clearing a previous run in $R"
  cluster_down
  rm -rf "$R"
fi
mkdir -p "$R/log" "$R/pid" "$R/bin"

# The original stdout and stderr: a signal can land while a function runs
# with its output redirected (kc ... >/dev/null), and the trap would inherit
# that redirection.
exec 3>&1 4>&2

finish() {
  local rc=$?
  exec 1>&3 2>&4
  teardown
  print_steps
  print_results
  echo "total $(since | tr -d ' ')s"
  echo "$PASSED passed, $FAILED failed$([ "$SKIPPED" = 0 ] || echo ", $SKIPPED skipped")"
  [ $rc = 0 ] && [ "$FAILED" = 0 ] && exit 0
  exit 1
}
trap finish EXIT
trap 'exec 1>&3 2>&4; log "interrupted"; FAILED=$((FAILED + 1)); RESULTS+=("FAIL  interrupted"); exit 130' INT TERM

# A setup step that fails counts as a failed test and ends the run.
setup_failed() {
  FAILED=$((FAILED + 1)); RESULTS+=("FAIL  setup: $1")
  local l
  for l in "$R"/log/*.log; do
    [ -f "$l" ] && { echo "--- tail $(basename "$l")"; tail -20 "$l"; }
  done
  [ -f "$R/pki/admin.kubeconfig" ] && { kc -n "$CSI_NS" get pods -o wide; driver_logs 20; } 2>&1
  exit 1
}

step "Debian packages" ensure_packages || setup_failed "Debian packages"
step "build k8s $K8S_VERSION + sidecars (cached)" "$E2E_DIR/build.sh" || setup_failed "build"
step "build harness helpers" "$E2E_DIR/build.sh" helpers "$R/bin" || setup_failed "helpers"
export PATH="$BIN:$PATH"
cluster_up || setup_failed "cluster"

if have_driver; then
  driver_up || setup_failed "driver"
  if [ -n "${VB_E2E_SCENARIOS:-}" ]; then
    sel=()
    for s in "${DRIVER_SCENARIOS[@]}"; do [[ "${s%%|*}" =~ $VB_E2E_SCENARIOS ]] && sel+=("$s"); done
    DRIVER_SCENARIOS=("${sel[@]}")
  fi
  run_scenarios yes
else
  why="no driver: the files the Dockerfile copies from make build are missing (make build)"
  [ "${VB_E2E_REQUIRE_DRIVER:-0}" = 1 ] && setup_failed "$why"
  log "driver scenarios not run: $why"
  run_scenarios no "$why"
fi
