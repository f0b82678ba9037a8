# shellcheck shell=bash
# A single-node Kubernetes cluster of host processes: etcd (Debian),
# kube-apiserver, kube-controller-manager, kube-scheduler and kubelet (built
# by build.sh), containerd + runc (Debian). Sourced by run.sh after lib.sh;
# needs R.
#
# Pod network: one bridge (POD_BRIDGE, gateway POD_GW) with the bridge and
# host-local CNI plugins; there is no kube-proxy, so iptables sends the
# kubernetes Service's address (10.0.0.1:443, what in-cluster clients dial)
# to the API server, which listens on all addresses. hostNetwork pods reach
# it the same way. The kubelet's root is /var/lib/kubelet, the path the
# shipped manifests mount.
#
# Gotchas this machine kind taught (see DESIGN.md section 7):
# - apiserver: --endpoint-reconciler-type=none with a loopback advertise
#   address, or it fights over the kubernetes Service endpoints;
# - kubelet: failCgroupV1: false and cgroupDriver: cgroupfs;
# - containerd CRI: restrict_oom_score_adj, since runc may not set -998;
# - never start a containerd while another one on the same state dir exits.

# Every process the harness starts joins this cgroup (with all its
# descendants: shims, nbdkit, nbdfuse), so teardown finds them all.
cg_dir() {
  if [ -f /sys/fs/cgroup/cgroup.controllers ]; then echo /sys/fs/cgroup/vb-e2e
  else echo /sys/fs/cgroup/pids/vb-e2e; fi
}
CG=$(cg_dir)

# The Debian packages the cluster needs (scripts/deps.sh installs them too).
CLUSTER_PACKAGES=(etcd-server containerd runc containernetworking-plugins iptables iproute2 busybox-static openssl curl mmdebstrap)

ensure_packages() {
  local missing=() p
  for p in "${CLUSTER_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} = 0 ] && { log "Debian packages present"; return 0; }
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# start_bg NAME CMD...: starts CMD in its own session, in the harness's
# cgroup, logging to $R/log/NAME.log; the PID is in $R/pid/NAME.
start_bg() {
  local name=$1; shift
  mkdir -p "$R/log" "$R/pid" "$CG"
  setsid bash -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$CG" "$@" \
    >"$R/log/$name.log" 2>&1 </dev/null &
  echo $! >"$R/pid/$name"
  disown $! # no "Killed" notices: teardown and scenario 6 kill them on purpose
}

make_pki() {
  local d=$R/pki
  mkdir -p "$d"
  (
    cd "$d" || exit 1
    openssl genrsa -out ca.key 2048 2>/dev/null
    openssl req -x509 -new -nodes -key ca.key -subj "/CN=vb-e2e-ca" -days 30 -out ca.crt 2>/dev/null
    sign() { # name CN O [subjectAltName]
      openssl genrsa -out "$1.key" 2048 2>/dev/null
      openssl req -new -key "$1.key" -subj "/CN=$2${3:+/O=$3}" -out "$1.csr" 2>/dev/null
      printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n%s\n' "${4:-}" >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 -extfile "$1.ext" -out "$1.crt" 2>/dev/null
    }
    sign apiserver kube-apiserver "" "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,IP:$POD_GW,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    sign admin admin system:masters
    sign kcm system:kube-controller-manager ""
    sign sched system:kube-scheduler ""
    sign kubelet "system:node:$NODE" system:nodes "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:$NODE"
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  )
  local u
  for u in admin kcm sched kubelet; do
    write_kubeconfig "$d/$u.kubeconfig" --client-certificate="$d/$u.crt" --client-key="$d/$u.key"
  done
}

# write_kubeconfig FILE CREDENTIAL-FLAGS...: a kubeconfig for this cluster
# (credentials: --client-certificate/--client-key, embedded, or --token).
write_kubeconfig() {
  local f=$1; shift
  local embed=(); [[ "$*" == *--client-certificate* ]] && embed=(--embed-certs)
  "$BIN/kubectl" config --kubeconfig="$f" set-cluster e2e --server="https://127.0.0.1:$APISERVER_PORT" \
    --certificate-authority="$R/pki/ca.crt" --embed-certs >/dev/null &&
    "$BIN/kubectl" config --kubeconfig="$f" set-credentials u "$@" "${embed[@]}" >/dev/null &&
    "$BIN/kubectl" config --kubeconfig="$f" set-context c --cluster=e2e --user=u >/dev/null &&
    "$BIN/kubectl" config --kubeconfig="$f" use-context c >/dev/null
}

start_etcd() {
  local peer=$((ETCD_PORT + 1)) metrics=$((ETCD_PORT + 2))
  mkdir -p "$R/etcd"
  start_bg etcd etcd --name vb-e2e --data-dir "$R/etcd/data" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "vb-e2e=http://127.0.0.1:$peer" --listen-metrics-urls "http://127.0.0.1:$metrics"
  wait_until 60 "etcd healthy" curl -sf "http://127.0.0.1:$ETCD_PORT/health"
}

start_apiserver() {
  local p=$R/pki
  start_bg kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address=0.0.0.0 --advertise-address=127.0.0.1 --secure-port="$APISERVER_PORT" \
    --endpoint-reconciler-type=none \
    --tls-cert-file="$p/apiserver.crt" --tls-private-key-file="$p/apiserver.key" \
    --client-ca-file="$p/ca.crt" \
    --kubelet-client-certificate="$p/admin.crt" --kubelet-client-key="$p/admin.key" \
    --kubelet-preferred-address-types=Hostname,InternalIP \
    --service-account-key-file="$p/sa.pub" --service-account-signing-key-file="$p/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --api-audiences=https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range=10.0.0.0/24 \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --allow-privileged=true
  wait_until 120 "kube-apiserver ready" kc get --raw /readyz
}

start_controller_manager_scheduler() {
  local p=$R/pki
  start_bg kube-controller-manager "$BIN/kube-controller-manager" --kubeconfig="$p/kcm.kubeconfig" \
    --authentication-kubeconfig="$p/kcm.kubeconfig" --authorization-kubeconfig="$p/kcm.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port=$((APISERVER_PORT + 1)) --leader-elect=false \
    --service-account-private-key-file="$p/sa.key" --root-ca-file="$p/ca.crt" \
    --cluster-signing-cert-file="$p/ca.crt" --cluster-signing-key-file="$p/ca.key" \
    --use-service-account-credentials=true --controllers='*' \
    --service-cluster-ip-range=10.0.0.0/24
  start_bg kube-scheduler "$BIN/kube-scheduler" --kubeconfig="$p/sched.kubeconfig" \
    --authentication-kubeconfig="$p/sched.kubeconfig" --authorization-kubeconfig="$p/sched.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port=$((APISERVER_PORT + 2)) --leader-elect=false
  wait_until 90 "default ServiceAccount (controller-manager working)" kc -n default get serviceaccount default
}

CONTAINERD_SOCK=$STATE/containerd/containerd.sock
ctr_() { ctr -a "$CONTAINERD_SOCK" -n k8s.io "$@"; }

start_containerd() {
  mkdir -p "$R/containerd" "$R/cni/net.d" "$STATE/containerd"
  cat >"$R/containerd/config.toml" <<EOF
version = 2
root = "$R/containerd/root"
state = "$STATE/containerd/state"
[grpc]
  address = "$CONTAINERD_SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$R/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
EOF
  cat >"$R/cni/net.d/10-vbe2e.conflist" <<EOF
{"cniVersion":"0.4.0","name":"vbe2e","plugins":[
  {"type":"bridge","bridge":"$POD_BRIDGE","isGateway":true,"ipMasq":false,"hairpinMode":true,
   "ipam":{"type":"host-local","dataDir":"$R/cni/ipam","ranges":[[{"subnet":"$POD_CIDR","gateway":"$POD_GW"}]],
           "routes":[{"dst":"0.0.0.0/0"}]}},
  {"type":"portmap","capabilities":{"portMappings":true}}]}
EOF
  start_bg containerd containerd --config "$R/containerd/config.toml"
  wait_until 60 "containerd" ctr -a "$CONTAINERD_SOCK" version
}

# oci_image REF OUT CONFIG-JSON LAYER-TAR...: an OCI image archive with
# uncompressed layers, for `ctr images import`.
oci_image() {
  local ref=$1 out=$2 config=$3; shift 3
  local t layers="" diffids="" l d s
  t=$(mktemp -d "$R/oci.XXXXXX")
  mkdir -p "$t/blobs/sha256"
  for l in "$@"; do
    d=$(sha256sum "$l" | cut -d' ' -f1); s=$(stat -c %s "$l")
    cp "$l" "$t/blobs/sha256/$d"
    layers+="${layers:+,}{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"sha256:$d\",\"size\":$s}"
    diffids+="${diffids:+,}\"sha256:$d\""
  done
  printf '{"architecture":"amd64","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":[%s]}}' "$config" "$diffids" >"$t/config"
  local cd cs; cd=$(sha256sum "$t/config" | cut -d' ' -f1); cs=$(stat -c %s "$t/config")
  mv "$t/config" "$t/blobs/sha256/$cd"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[%s]}' \
    "$cd" "$cs" "$layers" >"$t/manifest"
  local md ms; md=$(sha256sum "$t/manifest" | cut -d' ' -f1); ms=$(stat -c %s "$t/manifest")
  mv "$t/manifest" "$t/blobs/sha256/$md"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"%s","io.containerd.image.name":"%s"}}]}' \
    "$md" "$ms" "$ref" "$ref" >"$t/index.json"
  echo '{"imageLayoutVersion":"1.0.0"}' >"$t/oci-layout"
  tar -C "$t" -cf "$out" oci-layout index.json blobs
  rm -rf "$t"
}

# layer_tar DIR OUT: a reproducible layer of DIR's contents (sorted, zero
# mtimes, owned by root).
layer_tar() { tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$1" -cf "$2" .; }

# Images: pause (the sandbox) and busybox (every test pod), built here from
# the harness's pause and Debian's static busybox: nothing is pulled.
BUSYBOX_IMAGE=local.test/busybox:1
import_images() {
  local i=$R/images
  mkdir -p "$i/pause" "$i/busybox/bin" "$i/busybox/tmp" "$i/busybox/etc"
  cp "$R/bin/pause" "$i/pause/pause"
  # The image has no libc: the busybox must be busybox-static's.
  if ldd /bin/busybox >/dev/null 2>&1; then
    log "/bin/busybox is dynamically linked: install busybox-static"
    return 1
  fi
  cp /bin/busybox "$i/busybox/bin/busybox"
  local a
  for a in $(/bin/busybox --list); do
    [ "$a" = busybox ] || ln -sf busybox "$i/busybox/bin/$a"
  done
  chmod 1777 "$i/busybox/tmp"
  layer_tar "$i/pause" "$i/pause-layer.tar" && layer_tar "$i/busybox" "$i/busybox-layer.tar" || return 1
  oci_image registry.k8s.io/pause:3.10 "$i/pause.tar" '{"Entrypoint":["/pause"]}' "$i/pause-layer.tar" || return 1
  oci_image "$BUSYBOX_IMAGE" "$i/busybox.tar" '{"Entrypoint":["/bin/sh"],"Env":["PATH=/bin"]}' "$i/busybox-layer.tar" || return 1
  ctr_ images import "$i/pause.tar" >/dev/null
  ctr_ images import "$i/busybox.tar" >/dev/null
}

# pod_network_up: the bridge with its gateway address (so the API server
# and the store answer there before the first pod exists) and the Service
# address of the API server.
POD_BRIDGE=vbe2e0
POD_CIDR=10.244.0.0/24
POD_GW=10.244.0.1
API_VIP=10.0.0.1
pod_network_up() {
  ip link show "$POD_BRIDGE" >/dev/null 2>&1 || ip link add "$POD_BRIDGE" type bridge || return 1
  ip addr replace "$POD_GW/24" dev "$POD_BRIDGE" && ip link set "$POD_BRIDGE" up || return 1
  sysctl -qw net.ipv4.ip_forward=1 || return 1
  local chain
  for chain in PREROUTING OUTPUT; do
    iptables -t nat -C "$chain" -d "$API_VIP/32" -p tcp --dport 443 -j DNAT --to-destination "$POD_GW:$APISERVER_PORT" 2>/dev/null ||
      iptables -t nat -A "$chain" -d "$API_VIP/32" -p tcp --dport 443 -j DNAT --to-destination "$POD_GW:$APISERVER_PORT" || return 1
  done
}

pod_network_down() {
  local chain
  for chain in PREROUTING OUTPUT; do
    while iptables -t nat -D "$chain" -d "$API_VIP/32" -p tcp --dport 443 -j DNAT --to-destination "$POD_GW:$APISERVER_PORT" 2>/dev/null; do :; done
  done
  ip link del "$POD_BRIDGE" 2>/dev/null
  return 0
}

KUBELET_DIR=/var/lib/kubelet
# The host directories the node plugin mounts with Bidirectional
# propagation must be shared mounts, as they are on a systemd host (where /
# is shared); a host whose / is private gets them bound onto themselves and
# made shared.
SHARED_DIRS=("$KUBELET_DIR" /run/viperblock)
share_dirs() {
  local d
  for d in "${SHARED_DIRS[@]}"; do
    mkdir -p "$d" || return 1
    if [ "$(findmnt -no PROPAGATION --target "$d")" != shared ]; then
      mountpoint -q "$d" || mount --bind "$d" "$d" || return 1
      mount --make-shared "$d" || return 1
    fi
  done
}

start_kubelet() {
  share_dirs || return 1
  touch "$KUBELET_DIR/.vb-e2e"
  cat >"$R/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $R/pki/ca.crt}
authorization: {mode: Webhook}
address: 127.0.0.1
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $((KUBELET_PORT - 2))
tlsCertFile: $R/pki/kubelet.crt
tlsPrivateKeyFile: $R/pki/kubelet.key
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
imageServiceEndpoint: unix://$CONTAINERD_SOCK
resolvConf: /etc/resolv.conf
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
syncFrequency: 10s
fileCheckFrequency: 10s
EOF
  start_bg kubelet "$BIN/kubelet" --config="$R/kubelet-config.yaml" --kubeconfig="$R/pki/kubelet.kubeconfig" \
    --hostname-override="$NODE" --root-dir="$KUBELET_DIR"
  wait_until 120 "node $NODE registered" kc get node "$NODE" &&
    kc wait --for=condition=Ready "node/$NODE" --timeout=120s >/dev/null
}

install_snapshot_crds() {
  kc apply -f "$KBIN_DIR/crd/" >/dev/null
  kc wait --for=condition=Established --timeout=60s -f "$KBIN_DIR/crd/" >/dev/null
  start_bg snapshot-controller "$BIN/snapshot-controller" --kubeconfig="$R/pki/admin.kubeconfig" --leader-election=false --v=2
}

# cluster_up: everything up to a Ready node with the snapshot API.
cluster_up() {
  step "pod network" pod_network_up || return 1
  step "PKI" make_pki || return 1
  step "etcd" start_etcd || return 1
  step "kube-apiserver" start_apiserver || return 1
  step "controller-manager + scheduler" start_controller_manager_scheduler || return 1
  step "containerd + images" eval 'start_containerd && import_images' || return 1
  step "kubelet, node Ready" start_kubelet || return 1
  step "snapshot CRDs + snapshot-controller" install_snapshot_crds || return 1
}

# cluster_down: stops everything the harness started, in order (the
# driver runs in pods: their containers go with the kubelet's), then sweeps
# the cgroups (shims, the volume servers, anything that escaped a PID file),
# unmounts what is left under the run dir and the node's directories and
# detaches loop devices backed there. Safe to run twice and on a
# half-started cluster.
cluster_down() {
  local n
  stop_bg snapshot-controller
  stop_bg kubelet
  if running containerd; then
    local t
    for t in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s KILL "$t" >/dev/null 2>&1; done
    sleep 1
    for t in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "$t" >/dev/null 2>&1; done
    for t in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers delete "$t" >/dev/null 2>&1; done
  fi
  stop_bg containerd
  for n in kube-scheduler kube-controller-manager kube-apiserver etcd store; do stop_bg "$n"; done
  sweep_kubepods
  sweep_cgroup
  # The volume servers the node plugin placed outside its container.
  sweep_cgroup_named "$SERVER_CGROUP"
  unmount_all
  detach_loops
  sweep_cgroup
  pod_network_down
  rm -rf "${KUBELET_DIR:?}" /run/viperblock /var/lib/viperblock
  rm -rf "$STATE/containerd"
  # The kubelet's (now empty) pod cgroups; rmdir leaves any in use.
  find /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods -depth -type d -exec rmdir {} + 2>/dev/null
  return 0
}

# sweep_cgroup kills whatever is still in the harness's cgroup.
sweep_cgroup() {
  [ -d "$CG" ] || return 0
  local i pids
  for i in $(seq 1 20); do
    pids=$(cat "$CG/cgroup.procs" 2>/dev/null)
    [ -z "$pids" ] && break
    [ "$i" = 1 ] && log "killing leftover processes: $(echo $pids | tr '\n' ' ')"
    kill -KILL $pids 2>/dev/null
    sleep 0.5
  done
  rmdir "$CG" 2>/dev/null || true
}

# SERVER_CGROUP is the cgroup the shipped node plugin moves its volume
# servers into (--server-cgroup in deploy/kubernetes/base/driver-flags.yaml).
SERVER_CGROUP=viperblock-volumes

# sweep_cgroup_named NAME kills the processes of cgroup NAME in every
# hierarchy and removes it.
sweep_cgroup_named() {
  local d pids i
  for i in $(seq 1 20); do
    pids=$(cat /sys/fs/cgroup/*/"$1"/cgroup.procs /sys/fs/cgroup/"$1"/cgroup.procs 2>/dev/null | sort -u)
    [ -z "$pids" ] && break
    [ "$i" = 1 ] && log "killing volume servers: $(echo $pids | tr '\n' ' ')"
    kill -KILL $pids 2>/dev/null
    sleep 0.5
  done
  for d in /sys/fs/cgroup/*/"$1" /sys/fs/cgroup/"$1"; do [ -d "$d" ] && rmdir "$d" 2>/dev/null; done
  return 0
}

# sweep_kubepods kills pod processes the kubelet left (containers live in
# the kubelet's kubepods cgroups, not ours) — only if our containerd ran them.
sweep_kubepods() {
  local d pids
  for d in /sys/fs/cgroup/pids/kubepods /sys/fs/cgroup/kubepods; do
    [ -d "$d" ] || continue
    pids=$(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null)
    local p own=()
    for p in $pids; do
      # A container process whose shim was ours has our containerd's
      # state dir in its parent's command line; be conservative otherwise.
      grep -qs "$STATE/containerd" "/proc/$(awk '{print $4}' "/proc/$p/stat" 2>/dev/null)/cmdline" && own+=("$p")
    done
    [ ${#own[@]} -gt 0 ] && kill -KILL "${own[@]}" 2>/dev/null
  done
  return 0
}

unmount_all() {
  local i m left
  for i in 1 2 3 4 5; do
    left=$(awk -v r="$R" -v s="$STATE" -v k="$KUBELET_DIR/" '$2 == r || index($2, r "/") == 1 || index($2, s "/") == 1 ||
      index($2, k) == 1 || $2 "/" == k || index($2, "/run/viperblock/") == 1 || $2 == "/run/viperblock" {print $2}' /proc/mounts | sort -r)
    [ -z "$left" ] && return 0
    for m in $left; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || fusermount3 -uz "$m" 2>/dev/null; done
    sleep 0.5
  done
  left=$(awk -v r="$R" '$2 == r || index($2, r "/") == 1 {print $2}' /proc/mounts)
  [ -z "$left" ] || log "WARNING: still mounted: $left"
}

detach_loops() {
  local l f
  for l in /sys/block/loop*; do
    f=$(cat "$l/loop/backing_file" 2>/dev/null) || continue
    case "$f" in "$R"/* | "$STATE"/* | /run/viperblock/*) losetup -d "/dev/$(basename "$l")" 2>/dev/null && log "detached /dev/$(basename "$l") ($f)" ;; esac
  done
}
