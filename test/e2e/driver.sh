# shellcheck shell=bash
# Viperblock CSI on the e2e cluster, as host processes: bin/controller with
# csi-provisioner, csi-attacher, csi-snapshotter and csi-resizer on one
# socket, bin/node on the kubelet's plugin dir, registered by the registrar.
#
# Nothing here repeats the driver's flags: the cluster-scoped objects, the
# ServiceAccounts and the RBAC come from `kubectl kustomize deploy/kubernetes/
# <VB_E2E_KUSTOMIZATION>`, and every process runs with the args and env of
# its container in the rendered Deployment or DaemonSet (podargs moves their
# paths and ports to the host). Each component talks to the API server with
# its ServiceAccount's token, so the RBAC is tested too. Sourced by run.sh.

KUSTOMIZATION=${VB_E2E_KUSTOMIZATION:-base}
CSI_NS=viperblock-system
STORE_URL=file://$R/store
# The driver under test: make build's outputs, unless told otherwise.
DRIVER_BIN=${VB_E2E_DRIVER_BIN:-$REPO/bin}
PLUGIN_SO=${VB_E2E_PLUGIN:-$REPO/lib/nbdkit-viperblock-plugin.so}
# Host-only settings: where the image keeps the plugin, and the store and
# attacher for this machine (no S3 here; no kernel nbd module on most VMs).
HOST_SET=(-set "VIPERBLOCK_STORE=$STORE_URL" -set "VIPERBLOCK_ATTACHER=${VB_E2E_ATTACHER:-auto}")
NODE_EXTRA_ARGS=(--plugin="$PLUGIN_SO")
# Host paths for the pods' hostPath volumes and emptyDirs, and ports.
HOST_MAP=(-map "/var/lib/kubelet=$R/kubelet" -map "/var/lib/viperblock=$R/viperblock"
  -map "/run/viperblock=$R/run-viperblock" -emptydir "$R/pods")
LISTEN=(-listen-offset 20000 -listen-host 127.0.0.1)

have_driver() { [ -x "$DRIVER_BIN/controller" ] && [ -x "$DRIVER_BIN/node" ] && [ -x "$DRIVER_BIN/vblock" ] && [ -f "$PLUGIN_SO" ]; }

podargs() { "$R/bin/podargs" -f "$R/deploy.yaml" -node "$NODE" "${HOST_SET[@]}" "${HOST_MAP[@]}" "${LISTEN[@]}" "$@"; }

# run_container NAME KIND CONTAINER BINARY KUBECONFIG [EXTRA-ARGS...]:
# starts BINARY with the container's env and args.
run_container() {
  local name=$1 kind=$2 ctr=$3 bin=$4 kubeconfig=$5; shift 5
  local -a env args
  mapfile -t env < <(podargs -kind "$kind" -container "$ctr" -print env) || return 1
  mapfile -t args < <(podargs -kind "$kind" -container "$ctr" -print args) || return 1
  echo "$bin ${args[*]} $*" >"$R/log/$name.cmdline"
  start_bg "$name" env "${env[@]}" KUBECONFIG="$kubeconfig" "$bin" "${args[@]}" "$@"
}

# sa_kubeconfig SA: a kubeconfig with a token of that ServiceAccount.
sa_kubeconfig() {
  local f=$R/pki/sa-$1.kubeconfig token
  token=$(kc -n "$CSI_NS" create token "$1" --duration=6h) || return 1
  write_kubeconfig "$f" --token="$token" || return 1
  # The token must authenticate as the ServiceAccount, not anonymously.
  "$BIN/kubectl" --kubeconfig="$f" auth whoami -o jsonpath='{.status.userInfo.username}' 2>/dev/null |
    grep -qx "system:serviceaccount:$CSI_NS:$1" || { log "kubeconfig $f does not authenticate as $1" >&2; return 1; }
  echo "$f"
}

deploy_objects() {
  kc kustomize "$REPO/deploy/kubernetes/$KUSTOMIZATION" >"$R/deploy.yaml" || return 1
  "$R/bin/podargs" -f "$R/deploy.yaml" -print manifests -exclude Deployment,DaemonSet >"$R/deploy-objects.yaml" || return 1
  kc apply -f "$R/deploy-objects.yaml" >/dev/null || return 1
  log "applied $(grep -c '^kind:' "$R/deploy-objects.yaml") objects from deploy/kubernetes/$KUSTOMIZATION (Deployment and DaemonSet run as host processes)"
}

CONTROLLER_SOCK=$R/pods/socket-dir/csi.sock
NODE_SOCK=$R/kubelet/plugins/$DRIVER/csi.sock

start_controller() {
  mkdir -p "$R/pods/socket-dir" "$R/store"
  CTL_KUBECONFIG=${CTL_KUBECONFIG:-$(sa_kubeconfig viperblock-csi-controller)} || return 1
  run_container controller Deployment controller "$DRIVER_BIN/controller" "$CTL_KUBECONFIG" || return 1
  wait_until 60 "controller socket $CONTROLLER_SOCK" test -S "$CONTROLLER_SOCK" || return 1
  local s
  for s in csi-provisioner csi-attacher csi-snapshotter csi-resizer; do
    run_container "$s" Deployment "$s" "$BIN/$s" "$CTL_KUBECONFIG" --kubeconfig="$CTL_KUBECONFIG" || return 1
  done
}

start_node() {
  mkdir -p "$R/viperblock/wal" "$R/run-viperblock" "$(dirname "$NODE_SOCK")"
  NODE_KUBECONFIG=${NODE_KUBECONFIG:-$(sa_kubeconfig viperblock-csi-node)} || return 1
  run_container node DaemonSet node "$DRIVER_BIN/node" "$NODE_KUBECONFIG" "${NODE_EXTRA_ARGS[@]}" || return 1
  wait_until 60 "node plugin socket $NODE_SOCK" test -S "$NODE_SOCK"
}

start_registrar() {
  run_container registrar DaemonSet node-driver-registrar "$R/bin/registrar" /dev/null \
    --plugin-registration-path="$R/kubelet/plugins_registry" || return 1
  wait_until 90 "CSINode $NODE lists $DRIVER" csinode_has_driver
}

csinode_has_driver() {
  kc get csinode "$NODE" -o jsonpath='{.spec.drivers[*].name}' 2>/dev/null | grep -qw "$DRIVER"
}

DRIVER_PROCS=(controller csi-provisioner csi-attacher csi-snapshotter csi-resizer node registrar)

# driver_alive fails, naming them, if any of the driver's processes died.
driver_alive() {
  local p dead=()
  for p in "${DRIVER_PROCS[@]}"; do running "$p" || dead+=("$p"); done
  [ ${#dead[@]} = 0 ] && return 0
  log "driver processes not running: ${dead[*]}"
  return 1
}

driver_up() {
  step "deploy objects (kustomize $KUSTOMIZATION)" deploy_objects || return 1
  step "controller + sidecars" start_controller || return 1
  step "node plugin" start_node || return 1
  step "registrar, CSINode lists driver" start_registrar || return 1
  # The sidecars exit when they lose the driver: give them a moment to.
  sleep 3
  driver_alive
}

# restart_node_plugin SIGNAL: kills the node plugin and starts it again
# with the same command line (scenario 6).
restart_node_plugin() {
  stop_bg node "${1:-KILL}"
  mv "$R/log/node.log" "$R/log/node.log.$(date +%s)"
  start_node
}
