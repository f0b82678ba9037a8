# shellcheck shell=bash
# Viperblock CSI on the e2e cluster as a user installs it: the driver's
# image, made from the Dockerfile's recipe (image.sh), and the sidecar
# images are imported into containerd; then, as VB_E2E_INSTALL says:
#   helm       (the default) `helm install` of deploy/helm/viperblock-csi
#              with its ci/production-values.yaml, changing only the image
#              tag, the store URL and the store's credentials;
#   kustomize  `kubectl apply -k` of an overlay of
#              deploy/kubernetes/overlays/production that changes only the
#              same three things.
# Both render the same objects (go test ./test/e2e -run TestHelmMatchesKustomize).
# The store is versitygw (S3) on the pod network's gateway. Sourced by run.sh.

CSI_NS=viperblock-system
DRIVER_IMAGE=ghcr.io/viperblock/viperblock-csi
DRIVER_TAG=e2e
# The driver under test: make build's outputs (the Dockerfile's COPY lines
# name them).
have_driver() {
  local src
  while read -r src _; do [ -f "$REPO/${src#/src/}" ] || return 1; done < <(df_copies)
  [ -n "$(df_copies)" ]
}

STORE_PORT=${VB_E2E_STORE_PORT:-17070}
STORE_BUCKET=viperblock-volumes
STORE_DIR=$R/s3
STORE_ENDPOINT=http://$POD_GW:$STORE_PORT
STORE_URL="s3://$STORE_BUCKET?region=us-east-1&endpoint=$STORE_ENDPOINT&path_style=true"
# The root account of versitygw: the harness's own; the driver gets keys
# of an ordinary account (store_user), which the credential scenario
# rotates.
STORE_ROOT_KEY=e2eroot
STORE_ROOT_SECRET=e2eroot-secret-0123456789
STORE_KEY=viperblock-a
STORE_SECRET=secret-a-0123456789abcdef

versitygw_bin() { command -v versitygw || echo "$(go env GOPATH)/bin/versitygw"; }

store_up() {
  mkdir -p "$STORE_DIR" "$R/s3-iam"
  start_bg store env ROOT_ACCESS_KEY_ID="$STORE_ROOT_KEY" ROOT_SECRET_ACCESS_KEY="$STORE_ROOT_SECRET" VGW_REGION=us-east-1 \
    "$(versitygw_bin)" --port "$POD_GW:$STORE_PORT" --iam-dir "$R/s3-iam" --iam-cache-disable --keep-alive posix "$STORE_DIR"
  wait_until 30 "versitygw on $STORE_ENDPOINT" curl -s -o /dev/null "$STORE_ENDPOINT/" || return 1
  s3_root PUT "/$STORE_BUCKET" >/dev/null || return 1
  store_user create "$STORE_KEY" "$STORE_SECRET"
}

# s3_root METHOD PATH: a request signed as versitygw's root account.
s3_root() {
  curl -sf --aws-sigv4 "aws:amz:us-east-1:s3" -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" \
    --user "$STORE_ROOT_KEY:$STORE_ROOT_SECRET" -X "$1" "$STORE_ENDPOINT$2"
}

# store_user create|delete KEY [SECRET]: an account of versitygw's IAM that
# owns the bucket.
store_user() {
  local admin=("$(versitygw_bin)" admin --access "$STORE_ROOT_KEY" --secret "$STORE_ROOT_SECRET" --endpoint-url "$STORE_ENDPOINT")
  case "$1" in
    create)
      "${admin[@]}" create-user --access "$2" --secret "$3" --role admin >/dev/null || return 1 ;;
    delete)
      "${admin[@]}" delete-user --access "$2" >/dev/null || return 1 ;;
  esac
}

# vblock_store ARGS...: bin/vblock against the e2e store, as the root account.
vblock_store() {
  VBLOCK_STORE=$STORE_URL AWS_ACCESS_KEY_ID=$STORE_ROOT_KEY AWS_SECRET_ACCESS_KEY=$STORE_ROOT_SECRET "$REPO/bin/vblock" "$@"
}

images_up() {
  mkdir -p "$R/images"
  step "driver image (Dockerfile recipe)" driver_image "$DRIVER_IMAGE:$DRIVER_TAG" || return 1
  step "sidecar images" sidecar_images "$R/deploy.yaml" || return 1
}

# write_overlay: the e2e overlay (image, store URL, credentials only).
write_overlay() {
  local o=$R/overlay
  mkdir -p "$o"
  cat >"$o/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $(realpath --relative-to="$o" "$REPO/deploy/kubernetes/overlays/production")
images:
  - name: $DRIVER_IMAGE
    newTag: $DRIVER_TAG
configMapGenerator:
  - name: viperblock-csi-config
    namespace: $CSI_NS
    behavior: merge
    literals:
      - VIPERBLOCK_STORE=$STORE_URL
patches:
  - patch: |-
      apiVersion: v1
      kind: Secret
      metadata: {name: viperblock-s3-credentials, namespace: $CSI_NS}
      stringData: {AWS_ACCESS_KEY_ID: $STORE_KEY, AWS_SECRET_ACCESS_KEY: $STORE_SECRET}
EOF
}

INSTALL=${VB_E2E_INSTALL:-helm}
HELM_RELEASE=viperblock-csi

helm_bin() { command -v helm || echo "$(go env GOPATH)/bin/helm"; }

# write_values: the e2e values for the chart (image tag, store URL,
# credentials only), beside ci/production-values.yaml.
write_values() {
  cat >"$R/values-e2e.yaml" <<EOF
image:
  tag: $DRIVER_TAG
store:
  url: "$STORE_URL"
  credentials:
    create: true
    accessKeyID: $STORE_KEY
    secretAccessKey: $STORE_SECRET
EOF
}

# helm_args: the release, the chart, its production values and the e2e ones.
helm_args() {
  echo "$HELM_RELEASE $REPO/deploy/helm/viperblock-csi --namespace $CSI_NS -f $REPO/deploy/helm/viperblock-csi/ci/production-values.yaml -f $R/values-e2e.yaml"
}

deploy_driver() {
  case "$INSTALL" in
    helm) deploy_driver_helm ;;
    kustomize) deploy_driver_kustomize ;;
    *) log "VB_E2E_INSTALL=$INSTALL: want helm or kustomize"; return 1 ;;
  esac
}

deploy_driver_kustomize() {
  write_overlay || return 1
  kc kustomize "$R/overlay" >"$R/deploy.yaml" || return 1
  images_up || return 1
  kc apply -k "$R/overlay" >"$R/log/apply.log" 2>&1 || { cat "$R/log/apply.log"; return 1; }
  log "applied $(grep -c '^kind:' "$R/deploy.yaml") objects (kubectl apply -k of the production overlay with the e2e image and store)"
}

# deploy_driver_helm, as the README says: the namespace, labelled for the
# privileged node plugin, then helm install.
deploy_driver_helm() {
  local helm manifest
  helm=$(helm_bin)
  if [ ! -x "$helm" ]; then
    "$REPO/scripts/deps.sh" go-tools || return 1
    helm=$(helm_bin)
  fi
  write_values || return 1
  # shellcheck disable=SC2046 # helm_args prints words
  "$helm" template $(helm_args) --api-versions snapshot.storage.k8s.io/v1 >"$R/deploy.yaml" || return 1
  images_up || return 1
  kc create namespace "$CSI_NS" >/dev/null || return 1
  kc label namespace "$CSI_NS" pod-security.kubernetes.io/enforce=privileged pod-security.kubernetes.io/warn=privileged >/dev/null || return 1
  # shellcheck disable=SC2046
  "$helm" install $(helm_args) --kubeconfig "$R/pki/admin.kubeconfig" >"$R/log/helm-install.log" 2>&1 ||
    { cat "$R/log/helm-install.log"; return 1; }
  manifest=$("$helm" get manifest "$HELM_RELEASE" --namespace "$CSI_NS" --kubeconfig "$R/pki/admin.kubeconfig") || return 1
  # The chart renders the class only where the cluster serves the snapshot
  # API, which it does here.
  grep -q '^kind: VolumeSnapshotClass' <<<"$manifest" ||
    { log "helm install rendered no VolumeSnapshotClass on a cluster with the snapshot CRDs"; return 1; }
  log "installed $(grep -c '^kind:' <<<"$manifest") objects (helm install of deploy/helm/viperblock-csi with ci/production-values.yaml and the e2e image and store)"
}

driver_rollout() {
  kc -n "$CSI_NS" rollout status daemonset/viperblock-csi-node --timeout=300s >/dev/null &&
    kc -n "$CSI_NS" rollout status deployment/viperblock-csi-controller --timeout=300s >/dev/null
}

# csinode_has_driver [NODE]: the node's CSINode lists the driver (every
# node's, without NODE).
csinode_has_driver() {
  local n
  for n in ${1:-$NODE_A $NODE_B}; do
    kc get csinode "$n" -o jsonpath='{.spec.drivers[*].name}' 2>/dev/null | grepq -w "$DRIVER" || return 1
  done
}

driver_up() {
  step "store (versitygw)" store_up || return 1
  step "deploy ($INSTALL)" deploy_driver || return 1
  step "driver pods Ready" driver_rollout || return 1
  step "CSINodes list driver" wait_until 120 "the CSINodes of $NODE_A and $NODE_B list $DRIVER" csinode_has_driver || return 1
  # The sidecars exit when they cannot reach the driver: give them a moment to.
  sleep 3
  driver_alive
}

# driver_restarts: "POD-UID/CONTAINER COUNT" per driver container.
driver_restarts() {
  local pod uid
  for pod in $(kc -n "$CSI_NS" get pods -o name 2>/dev/null); do
    uid=$(kc -n "$CSI_NS" get "$pod" -o jsonpath='{.metadata.uid}' 2>/dev/null) || continue
    kc -n "$CSI_NS" get "$pod" -o jsonpath='{range .status.containerStatuses[*]}{.name} {.restartCount}{"\n"}{end}' 2>/dev/null |
      sed "s|^|$uid/|"
  done
}

# restarted_since BEFORE: the containers that restarted since driver_restarts
# printed BEFORE (a new pod's container counts from 0).
restarted_since() {
  driver_restarts | awk -v before="$1" 'BEGIN {
      n = split(before, l, "\n")
      for (i = 1; i <= n; i++) { split(l[i], f, " "); if (f[1] != "") was[f[1]] = f[2] }
    }
    $2 > ((($1) in was) ? was[$1] : 0) {print $1 " " $2}'
}

# driver_alive fails, naming them, unless every driver pod is Ready (it
# waits a minute for pods that are being replaced).
driver_alive() {
  kc -n "$CSI_NS" wait --for=condition=Ready pods --all --timeout=60s >/dev/null 2>&1 && return 0
  log "driver pods not Ready: $(kc -n "$CSI_NS" get pods --no-headers 2>&1 | awk '$2 !~ /^([0-9]+)\/\1$/ {print $1 " " $2 " " $3}' | tr '\n' ';')"
  return 1
}

# node_pod [NODE]: the node plugin's pod on NODE (default node A), not one
# being deleted.
node_pod() {
  kc -n "$CSI_NS" get pods -l app.kubernetes.io/component=node --field-selector "spec.nodeName=${1:-$NODE}" \
    -o jsonpath='{range .items[*]}{.metadata.name} {.metadata.deletionTimestamp}{"\n"}{end}' | awk 'NF == 1 {print $1; exit}'
}

# node_plugin_pid [NODE]: the host PID of the node plugin on NODE (default
# node A). The pods have hostPID, so both nodes' plugins are in the host's
# PID namespace; the one on NODE is in NODE's network namespace
# (hostNetwork).
node_plugin_pid() {
  local p want
  want=$(ip netns exec "${1:-$NODE}" readlink /proc/self/ns/net) || return 1
  for p in $(pgrep -x node); do
    tr '\0' ' ' <"/proc/$p/cmdline" | grepq -- '--endpoint=unix:///csi/csi.sock' || continue
    [ "$(readlink "/proc/$p/ns/net")" = "$want" ] && { echo "$p"; return 0; }
  done
  return 1
}

# driver_logs: tails of every driver container's log (for diagnosis).
driver_logs() {
  local pod c
  for pod in $(kc -n "$CSI_NS" get pods -o name); do
    for c in $(kc -n "$CSI_NS" get "$pod" -o jsonpath='{.spec.containers[*].name}'); do
      echo "--- $pod/$c"
      kc -n "$CSI_NS" logs "$pod" -c "$c" --tail="${1:-15}" 2>&1
    done
  done
}
