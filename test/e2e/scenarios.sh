# shellcheck shell=bash
# The e2e scenarios. Each is a function that returns non-zero on failure
# (with a line saying why); run_scenario times it and counts it. Pods are
# hostNetwork busybox pods in namespace e2e, on either node unless a
# scenario pins them with POD_NODE (pod, io_pod): one that disturbs a
# node, or moves a volume between the nodes.
# Sourced by run.sh.

NS=e2e
PASSED=0
FAILED=0
SKIPPED=0
RESULTS=()

# Scenarios that restart driver containers on purpose; any other scenario
# fails when a driver container restarted during it.
RESTARTS_EXPECTED="scenario_node_restart_io"

run_scenario() {
  local name=$1 fn=$2 s rc=0 r0=""
  s=$(date +%s.%N)
  log "-- scenario: $name"
  if [ "$fn" != scenario_smoke ] && ! driver_alive; then
    rc=1 # no point waiting for timeouts
  else
    [ "$fn" = scenario_smoke ] || r0=$(driver_restarts)
    "$fn" || rc=$?
  fi
  local d; d=$(awk -v a="$s" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
  if [ $rc = 0 ] && [ "$fn" != scenario_smoke ]; then
    if ! driver_alive; then
      log "   a driver pod is not Ready after the scenario"
      rc=1
    elif [[ " $RESTARTS_EXPECTED " != *" $fn "* ]] && [ -n "$(restarted_since "$r0")" ]; then
      log "   driver containers restarted during the scenario: $(restarted_since "$r0" | tr '\n' ';')"
      rc=1
    fi
  fi
  if [ $rc = 0 ]; then
    PASSED=$((PASSED + 1)); RESULTS+=("PASS  $(printf '%-44s %6ss' "$name" "$d")")
    log "-- PASS $name (${d}s)"
  else
    FAILED=$((FAILED + 1)); RESULTS+=("FAIL  $(printf '%-44s %6ss' "$name" "$d")")
    log "-- FAIL $name (${d}s)"
    diagnose
  fi
}

skip_scenario() {
  SKIPPED=$((SKIPPED + 1)); RESULTS+=("SKIP  $(printf '%-44s' "$1")  $2")
}

fail() { log "   failed: $*"; return 1; }

# diagnose prints what explains a failure: the namespace's objects and
# events and the tails of the driver's logs.
diagnose() {
  {
    kc -n "$NS" get pods,pvc -o wide
    kc get pv,volumeattachments
    kc -n "$NS" get volumesnapshots 2>/dev/null
    kc -n "$NS" get events --sort-by=.lastTimestamp | tail -20
    kc -n "$CSI_NS" get pods -o wide
    kc -n "$CSI_NS" get events --sort-by=.lastTimestamp | tail -10
    driver_logs 15
    local id
    for id in "${NODE_IDS[@]}"; do echo "--- tail kubelet-$id.log"; tail -15 "$R/log/kubelet-$id.log"; done
  } 2>&1 | sed 's/^/   | /'
}

# pvc NAME CLASS SIZE [Block] [dataSource-yaml]: creates a PVC.
pvc() {
  local name=$1 class=$2 size=$3 mode=${4:-Filesystem} source=${5:-}
  kc -n "$NS" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: $name}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: $class
  volumeMode: $mode
  resources: {requests: {storage: $size}}
${source}
EOF
}

# node_selector: the pod spec line that pins a pod to $POD_NODE, if set.
node_selector() { [ -z "${POD_NODE:-}" ] || echo "  nodeSelector: {kubernetes.io/hostname: $POD_NODE}"; }

# pod NAME PVC SCRIPT [block]: a busybox pod with the PVC at /data (or as
# the device /dev/xvda), running SCRIPT once; on node $POD_NODE if set.
pod() {
  local name=$1 claim=$2 script=$3 kind=${4:-fs}
  local use
  if [ "$kind" = block ]; then
    use="volumeDevices: [{name: v, devicePath: /dev/xvda}]"
  else
    use="volumeMounts: [{name: v, mountPath: /data}]"
  fi
  kc -n "$NS" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $name}
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
$(printf '%s\n' "$script" | sed 's/^[[:space:]]*/      /')
    $use
  volumes: [{name: v, persistentVolumeClaim: {claimName: $claim}}]
EOF
}

# run_pod NAME PVC SCRIPT [block]: runs SCRIPT to completion; prints its
# output; fails unless the pod Succeeded.
run_pod() { pod "$@" && wait_done "$1"; }

# wait_done NAME: waits (POD_TIMEOUT, default 180 s) for pod NAME to end;
# prints its output; fails unless it Succeeded.
wait_done() {
  local name=$1 phase=""
  local end=$(( $(date +%s) + ${POD_TIMEOUT:-180} ))
  while [ "$(date +%s)" -lt $end ]; do
    phase=$(kc -n "$NS" get pod "$name" -o jsonpath='{.status.phase}' 2>/dev/null)
    case "$phase" in Succeeded | Failed) break ;; esac
    sleep 1
  done
  kc -n "$NS" logs "$name" 2>/dev/null
  [ "$phase" = Succeeded ] || { log "   pod $name: phase ${phase:-none}" >&2; return 1; }
}

wait_running() {
  kc -n "$NS" wait --for=condition=Ready "pod/$1" --timeout="${2:-180}s" >/dev/null || fail "pod $1 not Ready"
}

delete_pod() { kc -n "$NS" delete pod "$@" --wait=true --timeout=120s >/dev/null; }

wait_bound() {
  kc -n "$NS" wait --for=jsonpath='{.status.phase}'=Bound "pvc/$1" --timeout="${2:-120}s" >/dev/null || fail "pvc $1 not Bound"
}

# volume_mounts [ID...]: the mounts of staged or published volumes and the
# node plugin's own (nbdfuse) mounts on the nodes (default: every node),
# each as ID:PATH.
volume_mounts() {
  local id
  for id in "${@:-${NODE_IDS[@]}}"; do
    node_mounts "$id" | awk -v k="$KUBELET_DIR/" -v n="/run/viperblock/" -v id="$id" \
      '(index($1, k) == 1 && $1 ~ /csi/) || index($1, n) == 1 {print id ":" $1}'
  done
}

# pod_node POD: the node POD runs on.
pod_node() { kc -n "$NS" get pod "$1" -o jsonpath='{.spec.nodeName}'; }

pv_of() { kc -n "$NS" get pvc "$1" -o jsonpath='{.spec.volumeName}'; }

# ---- scenarios -------------------------------------------------------------

# Smoke: the cluster itself works (no driver needed): both nodes Ready; on
# each, a pod on the pod network that logs, answers kubectl exec, reaches
# the pod on the other node and the API server through its Service
# address, and has the node's name as its node's hostname.
scenario_smoke() {
  local id n ip other
  for id in "${NODE_IDS[@]}"; do
    n=$(node_name "$id")
    node_ready "$n" || fail "node $n not Ready" || return 1
    kc -n "$NS" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: smoke-$id}
spec:
  nodeSelector: {kubernetes.io/hostname: $n}
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: $BUSYBOX_IMAGE, imagePullPolicy: Never, command: ["/bin/sh", "-c", "echo smoke-ok; exec nc -ll -p 8080 -e echo pong-$id"]}
EOF
  done
  for id in "${NODE_IDS[@]}"; do
    wait_running "smoke-$id" 120 || return 1
    kc -n "$NS" logs "smoke-$id" | grepq -x smoke-ok || fail "pod log of smoke-$id lacks smoke-ok" || return 1
    [ "$(kc -n "$NS" exec "smoke-$id" -- cat /proc/self/comm 2>&1)" = cat ] || fail "kubectl exec does not work on node $id" || return 1
    ip=$(kc -n "$NS" get pod "smoke-$id" -o jsonpath='{.status.podIP}')
    [[ "$ip" == "$(node_pod_cidr "$id" | sed 's/0\/24$//')"* ]] || fail "smoke-$id has address $ip, not one of node $id's pod network" || return 1
  done
  for id in "${NODE_IDS[@]}"; do
    other=$( [ "$id" = a ] && echo b || echo a )
    ip=$(kc -n "$NS" get pod "smoke-$other" -o jsonpath='{.status.podIP}')
    [ "$(kc -n "$NS" exec "smoke-$id" -- sh -c "nc -w 5 $ip 8080 </dev/null" 2>&1)" = "pong-$other" ] ||
      fail "the pod on node $id does not reach the pod on node $other ($ip)" || return 1
    kc -n "$NS" exec "smoke-$id" -- sh -c "nc -w 3 $API_VIP 443 </dev/null" >/dev/null 2>&1 ||
      fail "the pod on node $id does not reach the API server at $API_VIP:443" || return 1
    [ "$(in_node "$id" hostname)" = "$(node_name "$id")" ] || fail "node $id's hostname is $(in_node "$id" hostname)" || return 1
  done
  delete_pod smoke-a smoke-b || fail "pod deletion" || return 1
}

write_script='dd if=/dev/urandom of=/data/blob bs=1M count=8 2>/dev/null && sha256sum /data/blob > /data/blob.sha256 && sync && cat /data/blob.sha256'
verify_script='sha256sum -c /data/blob.sha256 >&2 && cat /data/blob.sha256'
# blob_sum: the checksum line of a write_script's or verify_script's output.
# A pod's log interleaves its stdout and stderr in no fixed order, so
# sha256sum -c's "OK" may come after it.
blob_sum() { grep -x '[0-9a-f]\{64\}  /data/blob' | tail -1; }

# fs_roundtrip NAME CLASS FSTYPE: write, delete the pod, read in a new pod.
fs_roundtrip() {
  local name=$1 class=$2 fstype=$3 w r
  pvc "$name" "$class" 1Gi && wait_bound "$name" || return 1
  w=$(run_pod "$name-w" "$name" "awk '\$2==\"/data\"{print \"fstype\", \$3}' /proc/mounts; $write_script") || fail "writer pod: $w" || return 1
  echo "$w" | grepq -x "fstype $fstype" || fail "/data is not $fstype: $w" || return 1
  delete_pod "$name-w" || return 1
  r=$(run_pod "$name-r" "$name" "$verify_script") || fail "reader pod: $r" || return 1
  [ -n "$(echo "$w" | blob_sum)" ] && [ "$(echo "$w" | blob_sum)" = "$(echo "$r" | blob_sum)" ] || fail "checksums differ: wrote $w read $r" || return 1
  delete_pod "$name-r"
}

scenario_ext4() { fs_roundtrip ext4 viperblock-ext4 ext4; }
scenario_xfs() { fs_roundtrip xfs viperblock-xfs xfs; }

scenario_block() {
  local w r
  pvc block viperblock-block 256Mi Block && wait_bound block || return 1
  w=$(run_pod block-w block 'test -b /dev/xvda || { echo "/dev/xvda is not a block device"; exit 1; }
    dd if=/dev/urandom of=/tmp/x bs=1M count=16 2>/dev/null && dd if=/tmp/x of=/dev/xvda bs=1M conv=fsync 2>/dev/null && sha256sum < /tmp/x' block) ||
    fail "writer: $w" || return 1
  delete_pod block-w || return 1
  r=$(run_pod block-r block 'dd if=/dev/xvda bs=1M count=16 2>/dev/null | sha256sum' block) || fail "reader: $r" || return 1
  [ "$w" = "$r" ] || fail "device checksum: wrote $w read $r" || return 1
  delete_pod block-r
}

wait_snapshot_ready() {
  kc -n "$NS" wait --for=jsonpath='{.status.readyToUse}'=true "volumesnapshot/$1" --timeout=120s >/dev/null ||
    fail "snapshot $1 not ReadyToUse"
}

# Snapshot of a volume in use: the restore has the data as of the snapshot,
# not what was written after it.
scenario_snapshot() {
  local before after restored
  pvc snap-src viperblock-ext4 1Gi && wait_bound snap-src || return 1
  pod snap-w snap-src "$write_script && echo written; exec sleep 3600" && wait_running snap-w || return 1
  wait_until 120 "snap-w wrote its data" eval 'kc -n "$NS" logs snap-w | grepq -x written' || fail "writer did not finish" || return 1
  before=$(kc -n "$NS" logs snap-w | grep -v '^written$' | tail -1)
  [ -n "$before" ] || fail "writer printed no checksum" || return 1
  kc -n "$NS" apply -f - >/dev/null <<EOF
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata: {name: snap1}
spec: {volumeSnapshotClassName: viperblock-snapshots, source: {persistentVolumeClaimName: snap-src}}
EOF
  wait_snapshot_ready snap1 || return 1
  after=$(kc -n "$NS" exec snap-w -- sh -c "$write_script") || fail "write after snapshot: $after" || return 1
  [ "$after" != "$before" ] || fail "second write produced the same checksum" || return 1
  pvc snap-restore viperblock-ext4 1Gi Filesystem "  dataSource: {apiGroup: snapshot.storage.k8s.io, kind: VolumeSnapshot, name: snap1}" &&
    wait_bound snap-restore || return 1
  restored=$(run_pod snap-r snap-restore "$verify_script") || fail "restored volume: $restored" || return 1
  [ -n "$before" ] && [ "$(echo "$restored" | blob_sum)" = "$(echo "$before" | blob_sum)" ] || fail "restore has $restored, the snapshot had $before (later write: $after)" || return 1
  delete_pod snap-w snap-r
}

# Clone: same data; writes to the clone leave the source alone; the source
# PVC can go while the clone still needs its data.
scenario_clone() {
  local src c out
  pvc clone-src viperblock-ext4 1Gi && wait_bound clone-src || return 1
  src=$(run_pod clone-w clone-src "$write_script") || fail "writer: $src" || return 1
  delete_pod clone-w || return 1
  pvc clone viperblock-ext4 1Gi Filesystem "  dataSource: {kind: PersistentVolumeClaim, name: clone-src}" && wait_bound clone || return 1
  c=$(run_pod clone-r clone "$verify_script && echo clone-only > /data/clone-only && sync") || fail "clone reader: $c" || return 1
  [ -n "$(echo "$src" | blob_sum)" ] && [ "$(echo "$c" | blob_sum)" = "$(echo "$src" | blob_sum)" ] || fail "clone has $c, source had $src" || return 1
  out=$(run_pod clone-src-r clone-src "$verify_script; test ! -e /data/clone-only && echo source-untouched") || fail "source after clone write: $out" || return 1
  echo "$out" | grepq -x source-untouched || fail "a write to the clone shows in the source" || return 1
  delete_pod clone-r clone-src-r || return 1
  # Delete the source while the clone lives: the clone must still read.
  local pv; pv=$(pv_of clone-src)
  kc -n "$NS" delete pvc clone-src --timeout=120s >/dev/null || fail "deleting the source PVC" || return 1
  wait_until 120 "PV $pv deleted" eval "! kc get pv $pv" || fail "source PV not deleted" || return 1
  out=$(run_pod clone-r2 clone "$verify_script") || fail "clone after its source was deleted: $out" || return 1
  delete_pod clone-r2
}

# Online expansion: the pod keeps running and df sees the new size.
scenario_expand_xfs() { expand_online expand-xfs viperblock-xfs; }
# ext4 grows online where the kernel lets the node plugin (CAP_SYS_RESOURCE);
# where it does not, as in this sandbox, the refusal must be reported and
# the filesystem must grow offline at the next stage. Both paths are tested:
# which one runs is fixed by the machine, and neither is a skip.
scenario_expand_ext4() {
  if have_cap_sys_resource; then expand_online expand-ext4 viperblock-ext4; else expand_restage expand-ext4 viperblock-ext4; fi
}

# Growing a mounted ext4 (resize2fs, the EXT4_IOC_RESIZE_FS ioctl) needs
# CAP_SYS_RESOURCE, which some VMs and sandboxes do not grant even to root;
# xfs_growfs needs only CAP_SYS_ADMIN.
have_cap_sys_resource() {
  local eff; eff=$(awk '/^CapEff/{print $2}' /proc/self/status)
  (( (16#$eff >> 24) & 1 ))
}

expand_online() {
  local expand=$1 class=$2 before after
  pvc "$expand" "$class" 1Gi && wait_bound "$expand" || return 1
  pod expand-p "$expand" "exec sleep 3600" && wait_running expand-p || return 1
  before=$(kc -n "$NS" exec expand-p -- df -k /data | awk 'NR==2{print $2}')
  kc -n "$NS" patch pvc "$expand" --type=merge -p '{"spec":{"resources":{"requests":{"storage":"2Gi"}}}}' >/dev/null || return 1
  local end=$(( $(date +%s) + 180 ))
  while [ "$(date +%s)" -lt $end ]; do
    after=$(kc -n "$NS" exec expand-p -- df -k /data | awk 'NR==2{print $2}')
    [ -n "$after" ] && [ -n "$before" ] && [ "$after" -gt $((before * 18 / 10)) ] && break
    sleep 2
  done
  log "   df: ${before} KiB -> ${after} KiB"
  [ -n "$after" ] && [ "$after" -gt $((before * 18 / 10)) ] || fail "df did not grow (before ${before} KiB, after ${after} KiB)" || return 1
  [ "$(kc -n "$NS" get pvc "$expand" -o jsonpath='{.status.capacity.storage}')" = 2Gi ] || fail "PVC capacity not 2Gi" || return 1
  kc -n "$NS" get pod expand-p -o jsonpath='{.status.phase}' | grepq -x Running || fail "pod stopped during expansion" || return 1
  delete_pod expand-p
}

# expand_restage: the online growth is refused (NodeExpandVolume answers
# FailedPrecondition and the kubelet reports it on the PVC); the pod keeps
# running and its data is intact; a new pod restages the volume, which grows
# the unmounted ext4, and sees the new size.
df_kib() { kc -n "$NS" exec "$1" -- df -k /data | awk 'NR==2{print $2}'; }
expand_restage() {
  local expand=$1 class=$2 before after
  pvc "$expand" "$class" 1Gi && wait_bound "$expand" || return 1
  pod expand-p "$expand" "echo kept >/data/kept && sync && exec sleep 3600" && wait_running expand-p || return 1
  before=$(df_kib expand-p)
  kc -n "$NS" patch pvc "$expand" --type=merge -p '{"spec":{"resources":{"requests":{"storage":"2Gi"}}}}' >/dev/null || return 1
  # The kubelet reports the refusal as the PVC's NodeResizeError condition.
  wait_until 180 "the refused online growth reported on the PVC" eval \
    "kc -n $NS get pvc $expand -o jsonpath='{.status.conditions[?(@.type==\"NodeResizeError\")].message}' | grepq CAP_SYS_RESOURCE" ||
    fail "the PVC does not say the online growth was refused: $(kc -n "$NS" get pvc "$expand" -o jsonpath='{range .status.conditions[*]}{.type}: {.message}{"\n"}{end}')" || return 1
  kc -n "$NS" get pod expand-p -o jsonpath='{.status.phase}' | grepq -x Running || fail "pod stopped after the refused growth" || return 1
  delete_pod expand-p
  pod expand-q "$expand" "exec sleep 3600" && wait_running expand-q || return 1
  wait_until 180 "df grows after restaging" eval '[ "$(df_kib expand-q)" -gt $((before * 18 / 10)) ]'
  after=$(df_kib expand-q)
  log "   df: ${before} KiB -> ${after} KiB (grown offline at restage)"
  [ -n "$after" ] && [ "$after" -gt $((before * 18 / 10)) ] || fail "df did not grow (before ${before} KiB, after ${after} KiB)" || return 1
  kc -n "$NS" exec expand-q -- cat /data/kept | grepq -x kept || fail "the file written before the growth is gone" || return 1
  wait_until 120 "PVC capacity 2Gi" eval '[ "$(kc -n '"$NS"' get pvc '"$expand"' -o jsonpath="{.status.capacity.storage}")" = 2Gi ]' ||
    fail "PVC capacity $(kc -n "$NS" get pvc "$expand" -o jsonpath='{.status.capacity.storage}'), not 2Gi" || return 1
  delete_pod expand-q
}

# Everything deleted: PVs, VolumeAttachments, snapshot contents and the
# volumes' objects in the store are gone.
scenario_cleanup() {
  kc -n "$NS" delete pods --all --wait=true --timeout=180s >/dev/null || fail "pods" || return 1
  kc -n "$NS" delete volumesnapshots --all --wait=true --timeout=120s >/dev/null || fail "snapshots" || return 1
  kc -n "$NS" delete pvc --all --wait=true --timeout=180s >/dev/null || fail "PVCs" || return 1
  wait_until 180 "all PVs deleted" eval '[ -z "$(kc get pv -o name)" ]' || fail "PVs left: $(kc get pv -o name)" || return 1
  wait_until 120 "all VolumeAttachments deleted" eval '[ -z "$(kc get volumeattachments -o name)" ]' || fail "VolumeAttachments left" || return 1
  wait_until 120 "all VolumeSnapshotContents deleted" eval '[ -z "$(kc get volumesnapshotcontents -o name)" ]' || fail "VolumeSnapshotContents left" || return 1
  local vols chunks
  wait_until 120 "store empty" eval '[ -z "$(vblock_store list 2>/dev/null)" ]'
  vols=$(vblock_store list 2>&1)
  chunks=$(find "$STORE_DIR/$STORE_BUCKET" -type f -path '*/chunks/*' | wc -l)
  log "   store: volumes [${vols}], chunk objects $chunks, objects $(find "$STORE_DIR/$STORE_BUCKET" -type f | wc -l)"
  [ -z "$vols" ] || fail "volumes left in the store: $vols" || return 1
  [ "$chunks" = 0 ] || fail "$chunks chunk objects left in the store" || return 1
  wait_until 60 "no volume mounts left" eval '[ -z "$(volume_mounts)" ]' || fail "mounts left: $(volume_mounts)" || return 1
}

DRIVER_SCENARIOS=(
  "0b shipped image|scenario_shipped_image"
  "1 ext4 PVC: write, new pod reads back|scenario_ext4"
  "2a xfs PVC: write, new pod reads back|scenario_xfs"
  "2b raw block PVC: dd write/read|scenario_block"
  "3 snapshot of a volume in use, restore|scenario_snapshot"
  "4 clone: same data, independent writes|scenario_clone"
  "5a online expansion of xfs, df grows|scenario_expand_xfs"
  "5b expansion of ext4 (online, or at restage where refused)|scenario_expand_ext4"
  "6a node-plugin restart under I/O|scenario_node_restart_io"
  "6b node-plugin rolling update|scenario_node_rolling_update"
  "8 controller rolling update|scenario_controller_rollout"
  "9 credential rotation|scenario_credential_rotation"
  "10 two-node move|scenario_two_node_move"
  "11 node drain|scenario_node_drain"
  "12 clone on another node|scenario_clone_other_node"
  "13 node partition|scenario_node_partition"
  "14 engine metrics and logs of a volume under load|scenario_observe"
  "15 encrypted, compressed PVC: no plaintext at rest, snapshot, clone|scenario_encrypted"
  "7 delete everything, store empty|scenario_cleanup"
)

run_scenarios() {
  kc create namespace "$NS" >/dev/null 2>&1 || true
  wait_until 60 "default ServiceAccount in $NS" kc -n "$NS" get serviceaccount default
  run_scenario "0 smoke: node Ready, busybox pod, exec" scenario_smoke
  local s
  if [ "$1" = yes ]; then
    for s in "${DRIVER_SCENARIOS[@]}"; do
      run_scenario "${s%%|*}" "${s##*|}"
    done
  else
    for s in "${DRIVER_SCENARIOS[@]}"; do skip_scenario "${s%%|*}" "not run: $2"; done
  fi
}

print_results() {
  echo "---- scenarios ----"
  local l; for l in "${RESULTS[@]}"; do echo "$l"; done
}
