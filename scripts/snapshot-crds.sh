#!/usr/bin/env bash
# Installs the VolumeSnapshot CRDs and the snapshot-controller, cluster
# add-ons that VolumeSnapshots need, at the external-snapshotter version the
# e2e runs and the csi-snapshotter sidecar matches: SNAPSHOTTER_VERSION in
# test/e2e/lib.sh, the one place for it (the README's commands name the
# same version; go test ./test/e2e -run TestSnapshotterVersion checks).
#
#   scripts/snapshot-crds.sh           kubectl apply both (KUBECONFIG as usual)
#   scripts/snapshot-crds.sh --print   print the commands only
set -euo pipefail
# shellcheck source=test/e2e/lib.sh
. "$(dirname "$0")/../test/e2e/lib.sh"
src=https://github.com/kubernetes-csi/external-snapshotter
cmds=(
  "kubectl apply -k $src/client/config/crd?ref=$SNAPSHOTTER_VERSION"
  "kubectl apply -k $src/deploy/kubernetes/snapshot-controller?ref=$SNAPSHOTTER_VERSION"
)
for c in "${cmds[@]}"; do
  if [ "${1:-}" = --print ]; then
    echo "$c"
  else
    echo "+ $c" >&2
    $c
  fi
done
