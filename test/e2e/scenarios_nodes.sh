# shellcheck shell=bash
# The scenarios that move volumes between the two nodes: a pod moved by
# hand, a node drained, a node partitioned from the API server and the
# store, and a clone used on the other node while its source is written.
# Sourced by run.sh after scenarios.sh.

other_node() { if [ "$1" = "$NODE_A" ]; then echo "$NODE_B"; else echo "$NODE_A"; fi; }
node_id_of() { if [ "$1" = "$NODE_A" ]; then echo a; else echo b; fi; }

# volume_handle PVC: the CSI volume ID of PVC's volume.
volume_handle() { kc get pv "$(pv_of "$1")" -o jsonpath='{.spec.csi.volumeHandle}'; }

# attached_nodes PVC: the nodes PVC's volume has a VolumeAttachment to.
attached_nodes() {
  local pv; pv=$(pv_of "$1")
  kc get volumeattachments -o jsonpath='{range .items[*]}{.spec.source.persistentVolumeName} {.spec.nodeName}{"\n"}{end}' |
    awk -v pv="$pv" '$1 == pv {print $2}'
}

# pvc_traces ID PVC: what node ID still holds of PVC's volume: its mounts
# (kubelet's staging and publish paths name the PV or the SHA-256 of the
# volume handle; the node plugin's name the volume) and its volume server.
pvc_traces() {
  local id=$1 pv handle hash p want
  pv=$(pv_of "$2"); handle=$(volume_handle "$2")
  hash=$(printf %s "$handle" | sha256sum | cut -c1-64)
  volume_mounts "$id" | grep -F -e "$pv" -e "$hash" -e "${handle##*/}"
  want=$(readlink "/run/netns/$(node_name "$id")" 2>/dev/null || ip netns exec "$(node_name "$id")" readlink /proc/self/ns/net)
  for p in $(pgrep -x nbdkit); do
    tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grepq -F "${handle##*/}" || continue
    [ "$(readlink "/proc/$p/ns/net")" = "$want" ] && echo "$id: nbdkit $p serves ${handle##*/}"
  done
}

# node_released ID PVC...: node ID holds no attachment, mount or server of
# any PVC (it waits up to two minutes for the node to let go).
node_released() {
  local id=$1; shift
  local c n; n=$(node_name "$id")
  for c in "$@"; do
    wait_until 120 "node $id lets go of $c" eval '[ -z "$(pvc_traces '"$id $c"')" ] && ! attached_nodes '"$c"' | grepq -x '"$n" ||
      fail "node $id still holds $c: $(pvc_traces "$id" "$c" | tr '\n' ';') attached to: $(attached_nodes "$c" | tr '\n' ' ')" || return 1
  done
}

# move_write TAG: files of many sizes under /data/TAG and their checksums.
move_write() {
  echo "mkdir -p /data/$1 && i=0 && while [ \$i -lt 24 ]; do
      dd if=/dev/urandom of=/data/$1/f\$i bs=4k count=\$(( (i * 37) % 256 + 1 )) 2>/dev/null || exit 1; i=\$((i + 1)); done
    (cd /data/$1 && sha256sum f* > ../$1.sums) && sync && echo wrote \$(wc -l < /data/$1.sums) files in $1"
}
move_verify() { echo "(cd /data/$1 && sha256sum -c ../$1.sums >/dev/null) && echo verified \$(wc -l < /data/$1.sums) files of $1 on \$(cat /etc/hostname 2>/dev/null || hostname)"; }

# Two-node move: written on A; the pod is deleted and made anew on B, which
# reads every file and writes more; then back on A, which reads both. Each
# node lets go of the volume when its pod is gone.
scenario_two_node_move() {
  local out
  pvc move viperblock-ext4 1Gi && wait_bound move || return 1
  out=$(POD_NODE=$NODE_A run_pod move-1 move "$(move_write a)") || fail "writer on $NODE_A: $out" || return 1
  log "   $NODE_A: $out"
  delete_pod move-1 || return 1
  out=$(POD_NODE=$NODE_B run_pod move-2 move "$(move_verify a) && $(move_write b)") || fail "on $NODE_B: $out" || return 1
  log "   $NODE_B: $(echo "$out" | tr '\n' ';')"
  [ "$(pod_node move-2)" = "$NODE_B" ] || fail "move-2 ran on $(pod_node move-2)" || return 1
  node_released a move || return 1
  delete_pod move-2 || return 1
  out=$(POD_NODE=$NODE_A run_pod move-3 move "$(move_verify a) && $(move_verify b)") || fail "back on $NODE_A: $out" || return 1
  log "   $NODE_A: $(echo "$out" | tr '\n' ';')"
  node_released b move || return 1
  delete_pod move-3
}

# Node drain: a StatefulSet's pod writes on its PVC; `kubectl drain` of its
# node moves it to the other node, where it finds its data; the drained
# node keeps no attachment, mount or server of the volume.
scenario_node_drain() {
  local from to pod=drain-0 claim=data-drain-0 rc=0
  kc -n "$NS" apply -f - >/dev/null <<EOF || return 1
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: drain}
spec:
  serviceName: drain
  replicas: 1
  selector: {matchLabels: {app: drain}}
  template:
    metadata: {labels: {app: drain}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: c
        image: $BUSYBOX_IMAGE
        imagePullPolicy: Never
        command: ["/bin/sh", "-c"]
        args:
        - |
          if [ -f /data/blob.sha256 ]; then
            sha256sum -c /data/blob.sha256 >/dev/null && echo "VERIFIED on \$NODE_NAME" || echo "CORRUPT on \$NODE_NAME"
          else
            dd if=/dev/urandom of=/data/blob bs=1M count=16 2>/dev/null && sha256sum /data/blob > /data/blob.sha256 && sync && echo WROTE
          fi
          exec sleep 3600
        env: [{name: NODE_NAME, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}]
        volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      storageClassName: viperblock-ext4
      resources: {requests: {storage: 1Gi}}
EOF
  wait_until 180 "$pod Ready" kc -n "$NS" wait --for=condition=Ready "pod/$pod" --timeout=5s || fail "$pod not Ready" || return 1
  wait_until 60 "$pod wrote" eval 'kc -n "$NS" logs '"$pod"' | grepq -x WROTE' || fail "$pod did not write: $(kc -n "$NS" logs "$pod")" || return 1
  from=$(pod_node "$pod"); to=$(other_node "$from")
  log "   $pod wrote on $from; draining $from"
  kc drain "$from" --ignore-daemonsets --delete-emptydir-data --force --timeout=300s >"$R/log/drain.log" 2>&1 ||
    { fail "kubectl drain $from: $(tail -3 "$R/log/drain.log")"; rc=1; }
  if [ $rc = 0 ]; then
    wait_until 240 "$pod Ready on $to" eval '[ "$(pod_node '"$pod"')" = '"$to"' ] && kc -n "$NS" wait --for=condition=Ready pod/'"$pod"' --timeout=5s' ||
      { fail "$pod did not come up on $to (on $(pod_node "$pod"))"; rc=1; }
  fi
  if [ $rc = 0 ]; then
    wait_until 60 "$pod checked its data" eval 'kc -n "$NS" logs '"$pod"' | grepq "^VERIFIED\|^CORRUPT"'
    kc -n "$NS" logs "$pod" | grepq '^VERIFIED' || { fail "$pod on $to: $(kc -n "$NS" logs "$pod")"; rc=1; }
    log "   $(kc -n "$NS" logs "$pod" | head -1)"
  fi
  [ $rc = 0 ] && { node_released "$(node_id_of "$from")" "$claim" || rc=1; }
  kc uncordon "$from" >/dev/null || rc=1
  kc -n "$NS" delete statefulset drain --wait=true --timeout=120s >/dev/null || rc=1
  kc -n "$NS" delete pod "$pod" --ignore-not-found --wait=true --timeout=120s >/dev/null || rc=1
  return $rc
}

# ---- node partition ---------------------------------------------------------

# The writer: each step writes 16 KiB to a new file on the ext4 volume
# and at the step's offset on the raw block volume, both with fsync, then
# syncs the filesystem; "step I HASH" is printed before the writes and
# "committed I" once all of them returned. It stops at the first error.
part_writer_script='i=0
  while [ $i -lt 4000 ]; do
    dd if=/dev/urandom of=/tmp/buf bs=16k count=1 2>/dev/null
    echo "step $i $(sha256sum < /tmp/buf | cut -c1-64)"
    dd if=/tmp/buf of=/data/d$i bs=16k conv=fsync 2>/tmp/err || { echo "IOERROR file $i: $(cat /tmp/err)"; break; }
    dd if=/tmp/buf of=/dev/xvda bs=16k seek=$i conv=fsync,notrunc 2>/tmp/err || { echo "IOERROR block $i: $(cat /tmp/err)"; break; }
    sync -f /data/d$i || { echo "IOERROR syncfs $i"; break; }
    echo "committed $i"
    i=$((i + 1))
    sleep 0.05
  done
  echo "writer ended at $i"
  exec sleep 3600'

# part_verifier_script N: prints "have I FILE-HASH BLOCK-HASH" for steps
# 0..N-1 ("none" for a missing file).
part_verifier_script() {
  echo "i=0
  while [ \$i -lt $1 ]; do
    f=none; [ -f /data/d\$i ] && f=\$(sha256sum < /data/d\$i | cut -c1-64)
    b=\$(dd if=/dev/xvda bs=16k skip=\$i count=1 2>/dev/null | sha256sum | cut -c1-64)
    echo \"have \$i \$f \$b\"
    i=\$((i + 1))
  done
  echo verifier done"
}

# pod_log_file POD: the container log of POD's container c, read from its
# node's directory on the host, so it can be followed while the node is
# cut off from the API server.
pod_log_file() {
  local uid id
  uid=$(kc -n "$NS" get pod "$1" -o jsonpath='{.metadata.uid}')
  id=$(node_id_of "$(pod_node "$1")")
  find "$R/nodes/$id/var/log/pods/${NS}_$1_$uid/c/" -name '*.log' 2>/dev/null | sort | head -1
}

# log_lines FILE: the container's output lines in a CRI log file.
log_lines() { sed -E 's/^[^ ]+ (stdout|stderr) [FP] //' "$1"; }

# store_objects VOL...: every object of the volumes in the store, with its
# size and modification time.
store_objects() {
  local v
  for v in "$@"; do
    find "$STORE_DIR/$STORE_BUCKET/$v" -type f -printf '%P %s %T@\n' 2>/dev/null | sed "s|^|$v/|"
  done | sort
}

# node_metric ID REGEXP: node ID's node plugin metrics lines matching
# REGEXP (from its --http-address, :9809, on the node's address).
node_metric() { curl -s --max-time 5 "http://$(node_ip "$1"):9809/metrics" | grep -E "$2"; }

# Node partition: node A loses the API server and the store while its pod
# writes (store durability: a flush returns only once it is in the store).
# The pod is force-deleted and node A marked out of service, so its
# VolumeAttachments go; a pod on node B then finds every step A confirmed.
# When A gets the store back it is fenced: its health reports it, and
# nothing it writes reaches the store; when it gets the API server back it
# lets go of the volumes.
scenario_node_partition() {
  local fsv blkv out logf n committed bad rc=0 before after
  kc apply -f - >/dev/null <<EOF || return 1
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: e2e-store-durable}
provisioner: $DRIVER
parameters: {csi.storage.k8s.io/fstype: ext4, durability: store}
reclaimPolicy: Delete
volumeBindingMode: Immediate
EOF
  pvc part-fs e2e-store-durable 1Gi && pvc part-blk e2e-store-durable 64Mi Block || return 1
  wait_bound part-fs && wait_bound part-blk || return 1
  fsv=$(volume_handle part-fs); blkv=$(volume_handle part-blk)
  POD_NODE=$NODE_A io_pod part-w part-fs part-blk "$part_writer_script" && wait_running part-w || return 1
  logf=$(pod_log_file part-w)
  [ -n "$logf" ] || fail "no log file of part-w under /var/log/pods" || return 1
  # Follow the writer's log on the host: it stays readable while A is cut off.
  tail -n +1 -F "$logf" >"$R/log/part-writer.log" 2>/dev/null &
  local tailpid=$!
  wait_until 60 "10 committed steps" eval '[ "$(log_lines "$R/log/part-writer.log" | grep -c "^committed ")" -ge 10 ]' ||
    { kill $tailpid; fail "the writer did not commit: $(log_lines "$R/log/part-writer.log" | tail -3)"; return 1; }
  log "   partitioning $NODE_A from the API server and the store at step $(log_lines "$R/log/part-writer.log" | grep -c '^committed ')"
  node_partition a on || { kill $tailpid; return 1; }
  scenario_node_partition_b "$fsv" "$blkv" || rc=1
  # Whatever happened: A back on the network, the taint gone.
  node_partition a off 2>/dev/null; node_partition a off "$APISERVER_PORT" 2>/dev/null
  kc taint node "$NODE_A" node.kubernetes.io/out-of-service- >/dev/null 2>&1
  kill $tailpid 2>/dev/null
  if [ $rc = 0 ]; then
    node_ready "$NODE_A" || wait_until 120 "$NODE_A Ready again" node_ready "$NODE_A" || { fail "$NODE_A not Ready again"; rc=1; }
  fi
  [ $rc = 0 ] && { node_released a part-fs part-blk || rc=1; }
  kc -n "$NS" delete pod part-r --ignore-not-found --wait=true --timeout=120s >/dev/null
  return $rc
}

# The part of the partition scenario that runs while A is cut off.
scenario_node_partition_b() {
  local fsv=$1 blkv=$2 n out committed bad before after
  wait_until 120 "$NODE_A NotReady" eval '! node_ready '"$NODE_A" || fail "$NODE_A still Ready" || return 1
  log "   $NODE_A NotReady; writer: $(log_lines "$R/log/part-writer.log" | grep -v '^step ' | tail -1)"
  kc -n "$NS" delete pod part-w --force --grace-period=0 >/dev/null 2>&1
  kc taint node "$NODE_A" node.kubernetes.io/out-of-service=nodeshutdown:NoExecute --overwrite >/dev/null || return 1
  wait_until 180 "the VolumeAttachments to $NODE_A removed" eval \
    '! attached_nodes part-fs | grepq -x '"$NODE_A"' && ! attached_nodes part-blk | grepq -x '"$NODE_A" ||
    fail "VolumeAttachments to $NODE_A not removed" || return 1
  n=$(log_lines "$R/log/part-writer.log" | awk '$1 == "step" {n = $2 + 1} END {print n + 0}')
  log "   attachments to $NODE_A removed; verifying steps 0..$((n - 1)) on $NODE_B"
  out=$(POD_TIMEOUT=300 POD_NODE=$NODE_B run_pod_io part-r part-fs part-blk "$(part_verifier_script "$n")") ||
    fail "verifier on $NODE_B: $(echo "$out" | tail -3)" || return 1
  echo "$out" >"$R/log/part-verifier.log"
  # Every step A confirmed must be there, file and block.
  committed=$(log_lines "$R/log/part-writer.log" | awk '$1 == "committed" {print $2}')
  bad=$(log_lines "$R/log/part-writer.log" | awk -v v="$R/log/part-verifier.log" '
    BEGIN { while ((getline l < v) > 0) { split(l, f, " "); if (f[1] == "have") { file[f[2]] = f[3]; blk[f[2]] = f[4] } } }
    $1 == "step" { h[$2] = $3 }
    $1 == "committed" { i = $2; if (!(i in file)) print "step " i ": not checked"; else if (file[i] != h[i]) print "step " i ": file " file[i]; else if (blk[i] != h[i]) print "step " i ": block " blk[i] }')
  [ -z "$bad" ] || fail "steps A confirmed are not on $NODE_B: $(echo "$bad" | head -5 | tr '\n' ';')" || return 1
  log "   $NODE_B has all $(echo "$committed" | grep -c .) steps A confirmed (A's writer then: $(log_lines "$R/log/part-writer.log" | tail -1))"
  delete_pod part-r || fail "unstage on $NODE_B" || return 1
  node_released b part-fs part-blk || return 1
  # A gets the store back (not yet the API server): it must find itself
  # fenced, say so, and write nothing.
  before=$(store_objects "${fsv##*/}" "${blkv##*/}")
  node_partition a off && node_partition a on "$APISERVER_PORT" || return 1
  log "   $NODE_A has the store back, not the API server"
  wait_until 120 "$NODE_A reports both volumes fenced" eval \
    '[ "$(node_metric a "^viperblock_volume_health_condition\\{.*reason=\"Fenced\"" | grep -cF -e "\"$fsv\"" -e "\"$blkv\"")" = 2 ]' ||
    fail "$NODE_A does not report the volumes fenced: $(node_metric a '^viperblock_volume_health' | tr '\n' ';')" || return 1
  log "   $(node_metric a '^viperblock_volume_health_condition\{.*reason="Fenced"' | head -1)"
  # Give A's drains and lease renewals time to try (drain interval 5 s,
  # renewals every 3.75 s), then compare the store.
  sleep 20
  after=$(store_objects "${fsv##*/}" "${blkv##*/}")
  [ "$before" = "$after" ] || fail "the fenced node changed the store: $(diff <(echo "$before") <(echo "$after") | grep '^[<>]' | head -5 | tr '\n' ';')" || return 1
  log "   the store is unchanged ($(echo "$after" | grep -c .) objects) after 20 s of $NODE_A with the store"
  # Nothing A confirmed after the takeover (a confirmation after it would
  # be a lost write).
  n=$(log_lines "$R/log/part-writer.log" | awk '$1 == "committed" {n = $2 + 1} END {print n + 0}')
  [ "$n" -le "$(grep -c '^have ' "$R/log/part-verifier.log")" ] || fail "A confirmed step $((n - 1)) after $NODE_B took over" || return 1
  node_partition a off "$APISERVER_PORT"
}

# Clone on another node: a clone of a volume a pod on A is writing is used
# on B while A goes on writing; each sees only its own writes.
scenario_clone_other_node() {
  local c0 out
  pvc cln-src viperblock-ext4 1Gi && wait_bound cln-src || return 1
  POD_NODE=$NODE_A pod cln-w cln-src 'dd if=/dev/urandom of=/data/base bs=1M count=8 2>/dev/null && sha256sum /data/base > /data/base.sha256 && sync || exit 1
    i=0
    while :; do
      dd if=/dev/urandom of=/data/w$((i % 8)) bs=64k count=1 conv=fsync 2>/tmp/err || { echo "IOERROR $i: $(cat /tmp/err)"; exec sleep 3600; }
      i=$((i + 1)); echo $i > /data/count; sync; sleep 0.1
    done' && wait_running cln-w || return 1
  wait_until 60 "the source's writer started" eval '[ "$(io_count cln-w)" -gt 3 ]' || fail "the writer on $NODE_A never wrote" || return 1
  pvc cln-dst viperblock-ext4 1Gi Filesystem "  dataSource: {kind: PersistentVolumeClaim, name: cln-src}" && wait_bound cln-dst 180 || return 1
  c0=$(io_count cln-w)
  out=$(POD_NODE=$NODE_B run_pod cln-r cln-dst 'sha256sum -c /data/base.sha256 >/dev/null || { echo "base differs"; exit 1; }
    echo "clone count $(cat /data/count)"; echo clone > /data/clone-only; dd if=/dev/urandom of=/data/w0 bs=64k count=1 conv=fsync 2>/dev/null; sync') ||
    fail "the clone on $NODE_B: $out" || return 1
  log "   $NODE_B: base verified; $(echo "$out" | tail -1) (source at ${c0} when cloned)"
  io_progress cln-w "on $NODE_A while the clone was used on $NODE_B" || return 1
  kc -n "$NS" exec cln-w -- test ! -e /data/clone-only || fail "the clone's write shows in the source" || return 1
  local cc; cc=$(echo "$out" | awk '/^clone count/ {print $3}')
  out=$(POD_NODE=$NODE_B run_pod cln-r2 cln-dst "[ -e /data/clone-only ] && [ \"\$(cat /data/count)\" = $cc ] && sha256sum -c /data/base.sha256 >/dev/null && echo clone intact") ||
    fail "the clone changed after the source went on writing: $out" || return 1
  log "   $NODE_B: $out; source at $(io_count cln-w)"
  ! kc -n "$NS" logs cln-w | grepq IOERROR || fail "I/O error on the source: $(kc -n "$NS" logs cln-w | grep IOERROR | head -2)" || return 1
  delete_pod cln-w cln-r cln-r2
}
