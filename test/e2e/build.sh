#!/usr/bin/env bash
# build.sh: builds, once per version, everything the e2e cluster runs that
# does not come from Debian: kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet and kubectl from k8s.io/kubernetes and the CSI
# sidecars (csi-provisioner, csi-attacher, csi-snapshotter,
# snapshot-controller, csi-resizer), and copies the snapshot CRDs. All of it
# comes from the Go module proxy through the k8sbuild module, in one
# `go build` so shared packages compile once; GOCACHE is reused.
# Output: $VB_E2E_CACHE/k8s-<version>/{bin,crd,stamp}, outside the
# repository. The stamp hashes the module's go.mod, go.sum and tools.go; when
# it matches, nothing is built. A cold build takes about 10 minutes on 2
# otherwise idle cores and peaks near 3 GiB.
#
# build.sh helpers DIR: builds the harness's own small commands (registrar,
# pause, livenessprobe) into DIR; seconds with a warm GOCACHE.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

MOD=$E2E_DIR/k8sbuild

if [ "${1:-}" = helpers ]; then
  out=${2:?usage: build.sh helpers DIR}
  mkdir -p "$out"
  cd "$MOD"
  CGO_ENABLED=0 go build -trimpath -o "$out/" ./cmd/registrar ./cmd/pause ./cmd/livenessprobe
  exit 0
fi

stamp=$( (cd "$MOD" && sha256sum go.mod go.sum tools.go e2e_test_deps.go; echo "$K8S_VERSION") | sha256sum | cut -c1-16)

mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/.build.lock"
flock 9

if [ -f "$KBIN_DIR/stamp" ] && [ "$(cat "$KBIN_DIR/stamp")" = "$stamp" ]; then
  log "k8s $K8S_VERSION binaries cached in $BIN (stamp $stamp): build skipped"
  exit 0
fi

log "building k8s $K8S_VERSION, CSI sidecars and helpers into $BIN (GOCACHE=$(go env GOCACHE))"
tmp=$KBIN_DIR.tmp
rm -rf "$tmp"; mkdir -p "$tmp/bin" "$tmp/crd"
cd "$MOD"

s=$(date +%s)
go mod download
log "modules downloaded in $(( $(date +%s) - s ))s"

ld="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  ld="$ld -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
done
s=$(date +%s)
CGO_ENABLED=0 go build -trimpath -ldflags "$ld" -o "$tmp/bin/" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler \
  k8s.io/kubernetes/cmd/kubelet \
  k8s.io/kubernetes/cmd/kubectl \
  k8s.io/kubernetes/test/images/agnhost \
  github.com/onsi/ginkgo/v2/ginkgo \
  github.com/kubernetes-csi/external-provisioner/v6/cmd/csi-provisioner \
  github.com/kubernetes-csi/external-attacher/v4/cmd/csi-attacher \
  github.com/kubernetes-csi/external-snapshotter/v8/cmd/csi-snapshotter \
  github.com/kubernetes-csi/external-snapshotter/v8/cmd/snapshot-controller \
  github.com/kubernetes-csi/external-resizer/v2/cmd/csi-resizer
log "go build of 12 commands: $(( $(date +%s) - s ))s"

# The upstream e2e test binary, for the External Storage suite
# (conformance.sh): the package's own test main, as Kubernetes builds it.
s=$(date +%s)
CGO_ENABLED=0 go test -c -trimpath -ldflags "$ld" -o "$tmp/bin/e2e.test" k8s.io/kubernetes/test/e2e
log "go test -c of e2e.test: $(( $(date +%s) - s ))s"

crd=$(go mod download -json "github.com/kubernetes-csi/external-snapshotter/client/v8@$SNAPSHOTTER_VERSION" |
  sed -n 's/.*"Dir": "\(.*\)",$/\1/p')
cp "$crd"/config/crd/snapshot.storage.k8s.io_*.yaml "$tmp/crd/"
chmod -R u+w "$tmp/crd"

echo "$stamp" >"$tmp/stamp"
rm -rf "$KBIN_DIR"
mv "$tmp" "$KBIN_DIR"
log "built: $(cd "$BIN" && echo *)"
