#!/usr/bin/env bash
# End-to-end test of Viperblock CSI on a real two-node Kubernetes, built
# and started on this machine (as root; Debian 12 with Go):
#
#   test/e2e/run.sh            # or: make e2e
#
# 1. builds Kubernetes and the CSI sidecars from the Go module proxy, once
#    per version, into $VB_E2E_CACHE (default /var/cache/viperblock-e2e);
# 2. starts etcd, kube-apiserver, kube-controller-manager and
#    kube-scheduler as host processes, and two nodes, each a set of
#    namespaces with its own containerd and kubelet (cluster.sh explains
#    the design); imports locally built pause and busybox images, installs
#    the snapshot CRDs and snapshot-controller;
# 3. when make build's outputs exist, deploys the driver as a user does:
#    the driver's image made from the Dockerfile's recipe and the sidecar
#    images imported into containerd, versitygw as the S3 store, and
#    `helm install` of the chart with its production values (or, with
#    VB_E2E_INSTALL=kustomize, `kubectl apply -k` of the production
#    overlay), with only the image, the store URL and the credentials
#    changed (driver.sh, image.sh); then runs
#    the driver scenarios (scenarios.sh, scenarios_shipped.sh); otherwise
#    only the cluster smoke test;
# 4. tears everything down, on success, failure or interrupt.
#
# Each node mounts its own directories over /var/lib/kubelet,
# /run/viperblock and /var/lib/viperblock (the paths the manifests mount)
# in its own mount namespace; the host's are left as they are. The
# cluster's addresses (10.244.0.0/16, the bridge vbe2e0) and the network
# namespaces vbe2e-a and vbe2e-b must be free.
#
# Prints timings per step and ends with "N passed, N failed[, N skipped]".
#
# Environment:
#   VB_E2E_CACHE          build cache dir (outside the repo)
#   VB_E2E_RUN_DIR        run dir (default /tmp/vb-e2e; wiped at start)
#   VB_E2E_KEEP=1         leave the cluster running at the end (teardown:
#                         test/e2e/run.sh --down; run scenarios on it
#                         again: test/e2e/run.sh --again)
#   VB_E2E_REQUIRE_DRIVER=1  fail instead of skipping the driver scenarios
#                         when the driver binaries are missing
#   VB_E2E_SCENARIOS      regexp: run only the driver scenarios it matches
#   VB_E2E_CONFORMANCE    after the scenarios, the upstream External Storage
#                         suite (conformance.sh): subset (the default: the
#                         specs in conformance-subset.txt), full (make
#                         conformance) or none; its specs count in the totals
#   VB_E2E_INSTALL        how the driver is installed: helm (the default,
#                         make e2e) or kustomize (make conformance)
#   VB_E2E_STORE_PORT     versitygw's port on the pod network's gateway
#   VB_E2E_LOCK_WAIT      seconds to wait for another run to end (default 0:
#                         fail at once)
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
# shellcheck source=scenarios_nodes.sh
. "$E2E_DIR/scenarios_nodes.sh"
# shellcheck source=scenarios_observe.sh
. "$E2E_DIR/scenarios_observe.sh"
# shellcheck source=scenarios_encrypted.sh
. "$E2E_DIR/scenarios_encrypted.sh"
# shellcheck source=conformance.sh
. "$E2E_DIR/conformance.sh"

[ "$(id -u)" = 0 ] || die "run as root: the cluster mounts, runs containers and loads images"

mkdir -p "$STATE"
exec 8>"$STATE/lock"
if ! flock -n 8; then
  [ "${VB_E2E_LOCK_WAIT:-0}" -gt 0 ] || die "another e2e run holds $STATE/lock"
  log "another e2e run holds $STATE/lock: waiting up to ${VB_E2E_LOCK_WAIT}s for it to end"
  flock -w "$VB_E2E_LOCK_WAIT" 8 || die "another e2e run still holds $STATE/lock after ${VB_E2E_LOCK_WAIT}s"
fi

teardown() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "${VB_E2E_KEEP:-0}" = 1 ] && [ "${1:-}" != force ]; then
    log "VB_E2E_KEEP=1: cluster left running; KUBECONFIG=$R/pki/admin.kubeconfig; stop it with $0 --down"
    return $rc
  fi
  local s; s=$(date +%s.%N)
  log "== teardown"
  # The suite's processes (conformance.sh runs them in the background).
  pkill -KILL -f -- "bin/e2e.test --kubeconfig=$R/pki/admin.kubeconfig" 2>/dev/null
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

# run_conformance: the upstream suite as VB_E2E_CONFORMANCE says; its
# passed, failed and skipped specs count in the totals, and its summary is
# a line of the results.
run_conformance() {
  local mode=${VB_E2E_CONFORMANCE:-subset} out line p f s rc=0
  [ "$mode" = none ] && return 0
  out=$R/log/conformance-$mode.out
  step "k8s storage suite ($mode)" conformance_tee "$mode" "$out" || rc=$?
  line=$(grep -E '^k8s storage suite: [0-9]+ passed, [0-9]+ failed' "$out" | tail -1)
  if [ -z "$line" ]; then
    FAILED=$((FAILED + 1)); RESULTS+=("FAIL  k8s storage suite ($mode): no summary (rc $rc; $out)")
    return
  fi
  p=$(grep -Eo '[0-9]+ passed' <<<"$line" | grep -Eo '[0-9]+')
  f=$(grep -Eo '[0-9]+ failed' <<<"$line" | grep -Eo '[0-9]+')
  s=$(grep -Eo '[0-9]+ skipped' <<<"$line" | grep -Eo '[0-9]+')
  PASSED=$((PASSED + p)); FAILED=$((FAILED + f)); SKIPPED=$((SKIPPED + ${s:-0}))
  [ "$rc" = 0 ] || [ "$f" -gt 0 ] || FAILED=$((FAILED + 1))
  RESULTS+=("$([ "$rc" = 0 ] && [ "$f" = 0 ] && echo PASS || echo FAIL)  $line ($mode)")
}

# conformance_tee MODE FILE: conformance_run MODE, its output also in FILE.
# (A pipeline, not a process substitution: conformance_run's `wait` for
# its specs would wait for that too, for ever.)
conformance_tee() {
  conformance_run "$1" 2>&1 | tee "$2"
  return "${PIPESTATUS[0]}"
}

# select_scenarios: only the driver scenarios VB_E2E_SCENARIOS matches.
select_scenarios() {
  [ -n "${VB_E2E_SCENARIOS:-}" ] || return 0
  local s sel=()
  for s in "${DRIVER_SCENARIOS[@]}"; do [[ "${s%%|*}" =~ $VB_E2E_SCENARIOS ]] && sel+=("$s"); done
  DRIVER_SCENARIOS=("${sel[@]}")
}

# --again: the scenarios once more on a cluster a VB_E2E_KEEP=1 run left
# up (no set-up, no teardown): for working on a scenario.
if [ "${1:-}" = --again ]; then
  [ -f "$R/pki/admin.kubeconfig" ] && running kube-apiserver || die "no cluster left running in $R (VB_E2E_KEEP=1 test/e2e/run.sh)"
  export PATH="$BIN:$PATH"
  trap 'exec 1>&3 2>&4; print_results; echo "$PASSED passed, $FAILED failed$([ "$SKIPPED" = 0 ] || echo ", $SKIPPED skipped")"; exit $((FAILED > 0))' EXIT
  exec 3>&1 4>&2
  select_scenarios
  run_scenarios yes
  run_conformance
  exit
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
  select_scenarios
  run_scenarios yes
  run_conformance
else
  why="no driver: the files the Dockerfile copies from make build are missing (make build)"
  [ "${VB_E2E_REQUIRE_DRIVER:-0}" = 1 ] && setup_failed "$why"
  log "driver scenarios not run: $why"
  run_scenarios no "$why"
fi
