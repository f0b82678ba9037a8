# shellcheck shell=bash
# Encryption at rest through the CSI driver. Sourced by run.sh.

# encrypted_class NAME SECRET: a StorageClass whose provisioner and
# node-stage secrets are SECRET (in $NS), ext4, zstd compression.
encrypted_class() {
  kc apply -f - >/dev/null <<EOF2
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: $1}
provisioner: $DRIVER
parameters:
  csi.storage.k8s.io/fstype: ext4
  compression: zstd
  csi.storage.k8s.io/provisioner-secret-name: $2
  csi.storage.k8s.io/provisioner-secret-namespace: $NS
  csi.storage.k8s.io/node-stage-secret-name: $2
  csi.storage.k8s.io/node-stage-secret-namespace: $NS
reclaimPolicy: Delete
volumeBindingMode: Immediate
EOF2
}

# store_grep VOL STRING: the store objects of VOL that hold STRING.
store_grep() { grep -rlF "$2" "$STORE_DIR/$STORE_BUCKET/$1" 2>/dev/null; }

# wal_grep STRING: the WAL files on either node that hold STRING.
wal_grep() {
  local id
  for id in "${NODE_IDS[@]}"; do in_node "$id" grep -rlF "$1" /var/lib/viperblock/wal 2>/dev/null; done
}

# chunks_of VOL: how many chunk objects VOL has in the store.
chunks_of() { find "$STORE_DIR/$STORE_BUCKET/$1" -type f -path '*/chunks/*' 2>/dev/null | wc -l; }

# Encrypted, compressed PVCs: a pod writes a file made of a known marker;
# once it is drained, no object of the volume in the store and no WAL file
# on either node holds the marker (the same file in a plain PVC is found in
# its chunks: the search works); a new pod reads it back, as do a snapshot
# restore and a clone. (A clone or restore with another key is refused
# with FailedPrecondition "wrong key": pkg/driver's TestCreateVolumeEncrypted
# and TestNodeStageEncrypted; here a failed provision from a snapshot would
# leave the snapshot's source-protection finalizer to the provisioner's
# retries.)
scenario_encrypted() {
  local marker key w r enc plain c
  marker="VBE2E-MARKER-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  key=$(head -c 32 /dev/urandom | base64)
  kc -n "$NS" create secret generic e2e-kek --from-literal=encryptionKey="$key" >/dev/null || fail "secret" || return 1
  encrypted_class e2e-encrypted e2e-kek || return 1
  local write="i=0; while [ \$i -lt 20000 ]; do echo $marker; i=\$((i+1)); done > /data/marker && sha256sum /data/marker && sync"
  pvc enc e2e-encrypted 1Gi && wait_bound enc || return 1
  pvc enc-plain viperblock-ext4 1Gi && wait_bound enc-plain || return 1
  w=$(run_pod enc-w enc "$write") || fail "writer: $w" || return 1
  r=$(run_pod enc-plain-w enc-plain "$write") || fail "plain writer: $r" || return 1
  enc=$(volume_handle enc); enc=${enc#*/}
  plain=$(volume_handle enc-plain); plain=${plain#*/}
  wait_until 60 "the encrypted volume's chunks in the store" eval '[ "$(chunks_of "$enc")" -gt 0 ]' || fail "no chunks of $enc" || return 1
  wait_until 60 "the plain volume's chunks in the store" eval '[ -n "$(store_grep "$plain" "$marker")" ]' ||
    fail "the marker is not found in the plain volume's store objects: the search does not work" || return 1
  [ -z "$(store_grep "$enc" "$marker")" ] || fail "plaintext in the store: $(store_grep "$enc" "$marker")" || return 1
  ! wal_grep "$marker" | grep -v "/$plain/" | grepq . || fail "plaintext in a WAL: $(wal_grep "$marker")" || return 1
  delete_pod enc-w enc-plain-w || return 1
  r=$(run_pod enc-r enc "sha256sum /data/marker") || fail "reader: $r" || return 1
  [ "$(echo "$w" | grep marker)" = "$(echo "$r" | grep marker)" ] || fail "read back $r, wrote $w" || return 1
  delete_pod enc-r || return 1
  kc -n "$NS" apply -f - >/dev/null <<EOF2
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata: {name: enc-snap}
spec: {volumeSnapshotClassName: viperblock-snapshots, source: {persistentVolumeClaimName: enc}}
EOF2
  wait_snapshot_ready enc-snap || return 1
  pvc enc-restore e2e-encrypted 1Gi Filesystem "  dataSource: {apiGroup: snapshot.storage.k8s.io, kind: VolumeSnapshot, name: enc-snap}" &&
    pvc enc-clone e2e-encrypted 1Gi Filesystem "  dataSource: {kind: PersistentVolumeClaim, name: enc}" &&
    wait_bound enc-restore && wait_bound enc-clone || return 1
  for c in enc-restore enc-clone; do
    r=$(run_pod "$c-r" "$c" "sha256sum /data/marker") || fail "$c: $r" || return 1
    [ "$(echo "$w" | grep marker)" = "$(echo "$r" | grep marker)" ] || fail "$c read $r, wrote $w" || return 1
    delete_pod "$c-r" || return 1
  done
}
