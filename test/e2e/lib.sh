# shellcheck shell=bash
# Shared settings and helpers for the e2e harness. Sourced, never run.
#
# Everything the harness starts is a host process with a PID file under the
# run directory; teardown stops exactly those PIDs, then unmounts whatever is
# left under the run directory.

# grepq ARGS...: grep -q for the end of a pipeline. grep -q exits at its
# first match; the command writing into the pipe then dies of SIGPIPE on its
# next write, and under pipefail the pipeline fails although grep matched
# (or, negated, passes although it did). grepq reads all of its input.
grepq() { grep "$@" >/dev/null; }

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$E2E_DIR/../.." && pwd)

# Versions. The sidecar versions are pinned in k8sbuild/go.mod and must match
# the images in deploy/kubernetes (the manifest test checks that).
K8S_VERSION=v1.37.2
SNAPSHOTTER_VERSION=v8.7.0

CACHE_ROOT=${VB_E2E_CACHE:-/var/cache/viperblock-e2e}
KBIN_DIR=$CACHE_ROOT/k8s-$K8S_VERSION   # bin/, crd/, stamp
BIN=$KBIN_DIR/bin

# One cluster per machine: the control plane binds fixed ports on the
# cluster network's gateway and loopback.
STATE=/run/vb-e2e          # lock, namespace files, containerd state
ETCD_PORT=${VB_E2E_ETCD_PORT:-12379}
APISERVER_PORT=${VB_E2E_APISERVER_PORT:-16443}

# Two nodes (cluster.sh): node A and node B, each a network, mount and UTS
# namespace with its own containerd and kubelet. NODE is node A, where the
# scenarios that disturb one node pin their pods there.
NODE_IDS=(a b)
NODE_A=vbe2e-a
NODE_B=vbe2e-b
NODE=$NODE_A
DRIVER=csi.viperblock.io

E2E_T0=${E2E_T0:-$(date +%s.%N)}
export E2E_T0

# since T0: seconds since the harness started, one decimal.
since() { awk -v a="$E2E_T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%7.1f", b-a}'; }
log() { echo "[$(since)s] $*"; }
die() { echo "[$(since)s] FATAL: $*" >&2; exit 1; }

# step NAME CMD...: runs CMD, prints its duration, records it for the summary.
STEP_TIMES=()
step() {
  local name=$1; shift
  local s; s=$(date +%s.%N)
  log "== $name"
  local rc=0
  "$@" || rc=$?
  local d; d=$(awk -v a="$s" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
  STEP_TIMES+=("$(printf '%-34s %7ss%s' "$name" "$d" "$([ $rc = 0 ] || echo "  (failed, rc=$rc)")")")
  log "== $name: ${d}s$([ $rc = 0 ] || echo " FAILED rc=$rc")"
  return $rc
}
print_steps() {
  echo "---- step timings ----"
  local l; for l in "${STEP_TIMES[@]}"; do echo "$l"; done
}

# wait_until SECONDS DESCRIPTION CMD...: polls CMD every 0.5 s.
wait_until() {
  local limit=$1 what=$2; shift 2
  local end=$(( $(date +%s) + limit ))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$end" ]; then
      log "timed out after ${limit}s waiting for: $what"
      return 1
    fi
    sleep 0.5
  done
}

# stop_bg NAME [SIGNAL]: stops one process started by start_bg and waits for
# it (up to 15 s, then SIGKILL).
stop_bg() {
  local name=$1 sig=${2:-TERM} f="$R/pid/$1"
  [ -f "$f" ] || return 0
  local pid; pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "-$sig" "$pid" 2>/dev/null || true
    local i
    for i in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name ($pid) ignored SIG$sig for 15s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
    fi
  fi
  rm -f "$f"
}

running() { [ -f "$R/pid/$1" ] && kill -0 "$(cat "$R/pid/$1")" 2>/dev/null; }

kc() { "$BIN/kubectl" --kubeconfig "$R/pki/admin.kubeconfig" "$@"; }
