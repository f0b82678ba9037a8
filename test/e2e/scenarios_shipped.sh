# shellcheck shell=bash
# The scenarios of the driver as shipped: its pods, restarts and rollouts of
# the node plugin and the controller under I/O, and a rotation of the
# store's credentials. Sourced by run.sh after scenarios.sh.

# The shipped image: every driver pod runs the image built from the
# Dockerfile's recipe and is Ready, and the engine's log lines (from the
# volume server, which lives outside the node plugin's container) reach
# `kubectl logs` of the node plugin.
scenario_shipped_image() {
  local images bad vol
  images=$(kc -n "$CSI_NS" get pods -o jsonpath='{range .items[*]}{range .spec.containers[*]}{.image}{"\n"}{end}{end}' | sort -u)
  echo "$images" | grepq -x "$DRIVER_IMAGE:$DRIVER_TAG" || fail "no pod runs $DRIVER_IMAGE:$DRIVER_TAG: $images" || return 1
  bad=$(kc -n "$CSI_NS" get pods --no-headers | awk '$3 != "Running"')
  [ -z "$bad" ] || fail "driver pods not Running: $bad" || return 1
  [ "$(kc -n "$CSI_NS" get deployment viperblock-csi-controller -o jsonpath='{.status.readyReplicas}')" = 2 ] ||
    fail "the controller Deployment does not have 2 ready replicas" || return 1
  pvc shipped viperblock-ext4 1Gi && wait_bound shipped || return 1
  run_pod shipped-w shipped "$write_script" >/dev/null || fail "writer pod" || return 1
  vol=$(kc get pv "$(pv_of shipped)" -o jsonpath='{.spec.csi.volumeHandle}')
  # The volume server's own lines, re-logged by the node plugin through
  # klog with the volume named on each: ... volume_id="<handle>" source="nbdkit".
  ENGINE_PREFIX="volume_id=\"$vol\" source=\"nbdkit\""
  # The node plugin of the node the writer ran on.
  NPOD=$(node_pod "$(pod_node shipped-w)")
  wait_until 60 "the engine's log for $vol in kubectl logs" eval \
    'kc -n "$CSI_NS" logs "$NPOD" -c node | grepq -F "$ENGINE_PREFIX"' ||
    fail "kubectl logs of the node plugin has no line with '$ENGINE_PREFIX': $(kc -n "$CSI_NS" logs "$NPOD" -c node | tail -5)" || return 1
  log "   $(kc -n "$CSI_NS" logs "$NPOD" -c node | grep -F "$ENGINE_PREFIX" | head -1 | cut -c1-160)"
  delete_pod shipped-w
}

# io_writer_script writes with fsync in a loop, to files on the ext4
# volume at /data and to the raw block volume at /dev/xvda, until
# /tmp/stop exists; it records what it wrote so io_verify_script can check
# it. Any failed write prints IOERROR and ends the pod.
io_writer_script='mkdir -p /data/sums /data/blk
  i=$(cat /data/count 2>/dev/null || echo 0)
  while [ ! -e /tmp/stop ]; do
    k=$((i % 32))
    dd if=/dev/urandom of=/tmp/buf bs=64k count=1 2>/dev/null
    dd if=/tmp/buf of=/data/f$k bs=64k conv=fsync 2>/tmp/err || { echo "IOERROR file $i: $(cat /tmp/err)"; exit 1; }
    sha256sum < /tmp/buf | cut -c1-64 > /data/sums/f$k
    yes "step-$i-" | head -c 65536 > /tmp/blk
    dd if=/tmp/blk of=/dev/xvda bs=64k seek=$k conv=fsync,notrunc 2>/tmp/err || { echo "IOERROR block $i: $(cat /tmp/err)"; exit 1; }
    echo $i > /data/blk/$k
    i=$((i + 1)); echo $i > /data/count
    sync || { echo "IOERROR sync $i"; exit 1; }
    sleep 0.1
  done
  echo stopped at $i
  exec sleep 3600'

# io_pod NAME FS-PVC BLOCK-PVC SCRIPT: a busybox pod with the ext4 PVC at
# /data and the raw block PVC as /dev/xvda, running SCRIPT; on node
# $POD_NODE if set.
io_pod() {
  kc -n "$NS" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $1}
spec:
  hostNetwork: true
  restartPolicy: Never
  terminationGracePeriodSeconds: 2
$(node_selector)
  containers:
  - name: c
    image: $BUSYBOX_IMAGE
    imagePullPolicy: Never
    command: ["/bin/sh", "-c"]
    args:
    - |
$(printf '%s\n' "$4" | sed 's/^[[:space:]]*/      /')
    volumeMounts: [{name: fs, mountPath: /data}]
    volumeDevices: [{name: blk, devicePath: /dev/xvda}]
  volumes:
  - {name: fs, persistentVolumeClaim: {claimName: $2}}
  - {name: blk, persistentVolumeClaim: {claimName: $3}}
EOF
}

# run_pod_io NAME FS-PVC BLOCK-PVC SCRIPT: io_pod run to completion; prints
# its output; fails unless it Succeeded.
run_pod_io() { io_pod "$@" && wait_done "$1"; }

# io_verify_script checks, in a new pod, every file and block the writer
# recorded: the data must be what was synced.
io_verify_script='n=0
  for s in /data/sums/f*; do
    k=${s##*/}
    [ "$(sha256sum < /data/$k | cut -c1-64)" = "$(cat $s)" ] || { echo "BAD file $k"; exit 1; }
    n=$((n + 1))
  done
  for b in /data/blk/*; do
    k=${b##*/}; i=$(cat $b)
    yes "step-$i-" | head -c 65536 > /tmp/want
    dd if=/dev/xvda of=/tmp/got bs=64k skip=$k count=1 2>/dev/null
    cmp -s /tmp/want /tmp/got || { echo "BAD block $k (step $i)"; exit 1; }
    n=$((n + 1))
  done
  echo "verified $n files and blocks, $(cat /data/count) steps"'

io_count() { kc -n "$NS" exec "$1" -- cat /data/count 2>/dev/null; }

# io_progress POD WHAT: the writer must advance (and not have failed).
io_progress() {
  local c0 c1
  c0=$(io_count "$1")
  wait_until 90 "writes continue $2" eval '[ "$(io_count '"$1"')" -gt "${c0:-0}" ]' ||
    fail "writes stalled $2 (count ${c0:-none}): $(kc -n "$NS" logs "$1" | tail -3)" || return 1
  ! kc -n "$NS" logs "$1" | grepq IOERROR || fail "I/O error $2: $(kc -n "$NS" logs "$1" | grep IOERROR | head -3)" || return 1
  log "   writes $2: ${c0:-0} -> $(io_count "$1")"
}

# io_scenario NAME ACTION...: the writer runs while ACTION disturbs the
# driver; then it stops, the pod goes (its volumes are unstaged through the
# driver that survived ACTION), and a new pod checks every synced write.
io_scenario() {
  local name=$1; shift
  local out
  pvc "$name-fs" viperblock-ext4 1Gi && pvc "$name-blk" viperblock-block 64Mi Block || return 1
  wait_bound "$name-fs" && wait_bound "$name-blk" || return 1
  io_pod "$name-w" "$name-fs" "$name-blk" "$io_writer_script" && wait_running "$name-w" || return 1
  wait_until 60 "writes started" eval '[ "$(io_count '"$name-w"')" -gt 3 ]' || fail "the writer never wrote" || return 1
  "$@" "$name-w" || return 1
  [ "$(kc -n "$NS" get pod "$name-w" -o jsonpath='{.status.phase}')" = Running ] ||
    fail "writer stopped: $(kc -n "$NS" logs "$name-w" | tail -3)" || return 1
  kc -n "$NS" exec "$name-w" -- touch /tmp/stop || return 1
  wait_until 30 "writer stopped" eval 'kc -n "$NS" logs '"$name-w"' | grepq "^stopped at"' || fail "writer did not stop" || return 1
  ! kc -n "$NS" logs "$name-w" | grepq IOERROR || fail "I/O error: $(kc -n "$NS" logs "$name-w" | grep IOERROR | head -3)" || return 1
  log "   writer $(kc -n "$NS" logs "$name-w" | tail -1)"
  delete_pod "$name-w" || fail "deleting the writer (unstage)" || return 1
  out=$(run_pod_io "$name-r" "$name-fs" "$name-blk" "$io_verify_script" 2>&1) ||
    fail "verification after the disturbance: $out" || return 1
  log "   $out"
  delete_pod "$name-r"
}

# wait_node_plugin_ready OLD-POD: a node plugin pod other than OLD-POD (or
# the same pod with its container restarted) is Ready and registered.
wait_node_plugin_ready() {
  kc -n "$CSI_NS" rollout status daemonset/viperblock-csi-node --timeout=180s >/dev/null ||
    fail "node plugin DaemonSet not rolled out" || return 1
  kc -n "$CSI_NS" wait --for=condition=Ready "pod/$(node_pod)" --timeout=120s >/dev/null || fail "node plugin not Ready" || return 1
  wait_until 60 "CSINode lists the driver" csinode_has_driver
}

disturb_delete_and_kill() {
  local pod pid
  pod=$(node_pod)
  log "   deleting the node plugin pod $pod"
  pid=$(node_plugin_pid)
  kc -n "$CSI_NS" delete pod "$pod" --wait=true --timeout=120s >/dev/null || fail "deleting $pod" || return 1
  wait_until 120 "a new node plugin pod" eval '[ -n "$(node_pod)" ] && [ "$(node_pod)" != '"$pod"' ]' ||
    fail "the DaemonSet made no new pod" || return 1
  wait_node_plugin_ready || return 1
  [ -n "$(node_plugin_pid)" ] && [ "$(node_plugin_pid)" != "$pid" ] || fail "the node plugin process did not change ($pid)" || return 1
  log "   node plugin pod $pod -> $(node_pod)"
  io_progress "$1" "after kubectl delete pod" || return 1
  pid=$(node_plugin_pid) || fail "no node plugin process found" || return 1
  log "   kill -9 of the node plugin, PID $pid"
  kill -KILL "$pid"
  wait_until 60 "the node plugin container restarted" eval '[ "$(node_plugin_pid)" != "" ] && [ "$(node_plugin_pid)" != '"$pid"' ]' ||
    fail "the node plugin did not restart" || return 1
  wait_node_plugin_ready || return 1
  io_progress "$1" "after kill -9"
}

disturb_rolling_update() {
  local gen pod
  pod=$(node_pod)
  gen=$(kc -n "$CSI_NS" get daemonset viperblock-csi-node -o jsonpath='{.metadata.generation}')
  log "   changing the DaemonSet's pod template (generation $gen)"
  kc -n "$CSI_NS" patch daemonset viperblock-csi-node --type=merge \
    -p "{\"spec\":{\"template\":{\"metadata\":{\"annotations\":{\"e2e.viperblock.io/rev\":\"$(date +%s)\"}}}}}" >/dev/null || return 1
  wait_until 180 "the DaemonSet replaced its pod" eval '[ -n "$(node_pod)" ] && [ "$(node_pod)" != '"$pod"' ]' ||
    fail "the DaemonSet did not replace $pod" || return 1
  wait_node_plugin_ready || return 1
  [ "$(kc -n "$CSI_NS" get daemonset viperblock-csi-node -o jsonpath='{.status.updatedNumberScheduled}')" = "${#NODE_IDS[@]}" ] ||
    fail "the DaemonSet did not update its pods on all ${#NODE_IDS[@]} nodes" || return 1
  log "   node plugin pod $pod -> $(node_pod)"
  io_progress "$1" "after the rolling update"
}

# The writers of these scenarios run on node A, whose node plugin the
# disturbance replaces.
scenario_node_restart_io() { POD_NODE=$NODE_A io_scenario nrio disturb_delete_and_kill; }
scenario_node_rolling_update() { POD_NODE=$NODE_A io_scenario nrup disturb_rolling_update; }

# controller_ops TAG: PVC create, snapshot, delete, through the controller.
controller_ops() {
  local t=$1 pv
  pvc "cr-$t" viperblock-ext4 1Gi && wait_bound "cr-$t" 180 || return 1
  kc -n "$NS" apply -f - >/dev/null <<EOF || return 1
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata: {name: cr-$t}
spec: {volumeSnapshotClassName: viperblock-snapshots, source: {persistentVolumeClaimName: cr-$t}}
EOF
  wait_snapshot_ready "cr-$t" || return 1
  pv=$(pv_of "cr-$t")
  kc -n "$NS" delete volumesnapshot "cr-$t" --timeout=120s >/dev/null || fail "deleting snapshot cr-$t" || return 1
  kc -n "$NS" delete pvc "cr-$t" --timeout=120s >/dev/null || fail "deleting PVC cr-$t" || return 1
  wait_until 120 "PV $pv deleted" eval "! kc get pv $pv" || fail "PV $pv of cr-$t not deleted" || return 1
}

# Controller rolling update with two replicas: the rollout completes, and
# volumes and snapshots are made and deleted during and after it.
scenario_controller_rollout() {
  kc -n "$CSI_NS" rollout restart deployment/viperblock-csi-controller >/dev/null || return 1
  controller_ops during || fail "PVC/snapshot/delete during the rollout" || return 1
  kc -n "$CSI_NS" rollout status deployment/viperblock-csi-controller --timeout=300s >/dev/null ||
    fail "the controller rollout did not complete: $(kc -n "$CSI_NS" get pods --no-headers | tr '\n' ';')" || return 1
  [ "$(kc -n "$CSI_NS" get deployment viperblock-csi-controller -o jsonpath='{.status.updatedReplicas}/{.status.readyReplicas}')" = 2/2 ] ||
    fail "not 2 updated, ready replicas" || return 1
  controller_ops after || fail "PVC/snapshot/delete after the rollout" || return 1
}

# Credential rotation: the store's keys change in the Secret (a second
# versitygw account), the first account is deleted, and drains of a staged
# volume and the controller's work keep succeeding, without a restage.
scenario_credential_rotation() {
  local vol chunks0 chunks1
  pvc rot viperblock-ext4 1Gi && wait_bound rot || return 1
  POD_NODE=$NODE_A pod rot-w rot "echo before > /data/before && sync && exec sleep 3600" && wait_running rot-w || return 1
  vol=$(kc get pv "$(pv_of rot)" -o jsonpath='{.spec.csi.volumeHandle}')
  store_user create viperblock-b secret-b-0123456789abcdef || fail "creating the second account" || return 1
  kc -n "$CSI_NS" patch secret viperblock-s3-credentials --type=merge \
    -p '{"stringData":{"AWS_ACCESS_KEY_ID":"viperblock-b","AWS_SECRET_ACCESS_KEY":"secret-b-0123456789abcdef"}}' >/dev/null || return 1
  # The kubelet updates the mounted Secret within its sync period; the
  # driver notices the change and logs it.
  wait_until 180 "the node plugin uses the new keys" eval \
    "kc -n $CSI_NS logs $(node_pod) -c node | grepq 'credentials.*changed'" ||
    fail "the node plugin did not log a credentials change" || return 1
  store_user delete "$STORE_KEY" || fail "deleting the first account" || return 1
  log "   account $STORE_KEY deleted; volume $vol keeps draining"
  chunks0=$(find "$STORE_DIR/$STORE_BUCKET" -type f -path "*chunks*" | wc -l)
  kc -n "$NS" exec rot-w -- sh -c 'dd if=/dev/urandom of=/data/after bs=1M count=16 conv=fsync 2>/dev/null && sync' ||
    fail "write after the rotation" || return 1
  wait_until 120 "a drain after the rotation" eval \
    '[ "$(find "$STORE_DIR/$STORE_BUCKET" -type f -path "*chunks*" | wc -l)" -gt '"$chunks0"' ]' ||
    fail "no chunk reached the store after the rotation: $(kc -n "$CSI_NS" logs "$(node_pod)" -c node | grep -F "$vol" | tail -3)" || return 1
  chunks1=$(find "$STORE_DIR/$STORE_BUCKET" -type f -path "*chunks*" | wc -l)
  log "   chunk objects: $chunks0 -> $chunks1"
  controller_ops rot || fail "controller work with the new keys" || return 1
  delete_pod rot-w || fail "unstage after the rotation" || return 1
  STORE_KEY=viperblock-b
}
