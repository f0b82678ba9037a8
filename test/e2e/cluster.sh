# shellcheck shell=bash
# A two-node Kubernetes cluster of host processes: etcd (Debian),
# kube-apiserver, kube-controller-manager and kube-scheduler (built by
# build.sh) on the host, and two nodes, A and B, each running its own
# containerd + runc (Debian) and kubelet. Sourced by run.sh after lib.sh;
# needs R.
#
# A node is three namespaces of the host, made by node_up and kept alive by
# bind mounts (the network namespace in /run/netns/vbe2e-ID, the mount and
# UTS namespaces in $STATE/ns/ID.{mnt,uts}); every process of the node
# (containerd, kubelet, and so the shims, containers and volume servers) is
# started inside them with nsenter:
#
#   network  eth0 (10.244.0.1N/24) is one end of a veth pair whose other end
#            (vbe2e-ID) is a port of the host's bridge vbe2e0 (10.244.0.1,
#            where the API server and the store listen); the node's pods are
#            on its own CNI bridge (10.244.N.0/24) and the host routes each
#            pod network to its node. hostNetwork pods (the node plugin) get
#            the node's namespace, as on a real node.
#   mount    /var/lib/kubelet, /var/lib/viperblock, /run/viperblock,
#            /var/log/pods and /var/log/containers are bind mounts of
#            $R/nodes/ID/..., shared (as on a systemd host), so the same
#            DaemonSet manifest finds each node's own directories at the
#            paths it mounts, and neither kubelet removes the other's pod
#            logs; the host's own paths are only the mount points.
#   UTS      the hostname is the node's name.
#
# PIDs are not separated (a node plugin with hostPID sees both nodes'
# processes), nor is /dev: the two nodes share the kernel's loop devices and
# /dev/fuse as two VMs share nothing, but no test depends on that. Each
# kubelet's pods live under its own cgroup root, /vbe2e-ID in every cgroup
# hierarchy, so neither kubelet sees (or cleans up) the other's pods.
#
# There is no kube-proxy: iptables in each node's network namespace sends
# the kubernetes Service's address (10.0.0.1:443, what in-cluster clients
# dial) to the API server. A node is cut off from the API server and the
# store (node_partition) by dropping, in its namespace, what it sends to
# their ports on the host's address.
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
CLUSTER_PACKAGES=(etcd-server containerd runc containernetworking-plugins iptables iproute2 busybox-static openssl curl mmdebstrap jq)

ensure_packages() {
  local missing=() p
  for p in "${CLUSTER_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grepq 'ok installed' || missing+=("$p")
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
    >"$R/log/$name.log" 2>&1 </dev/null 8>&- &
  echo $! >"$R/pid/$name"
  disown $! # no "Killed" notices: teardown and scenario 6 kill them on purpose
}

# Addresses. The host's bridge is the cluster network; node N (1, 2, ...)
# is 10.244.0.1N on it and has the pod network 10.244.N.0/24.
POD_BRIDGE=vbe2e0
POD_GW=10.244.0.1
API_VIP=10.0.0.1
API_URL=https://$POD_GW:$APISERVER_PORT
node_index() { local i; for i in "${!NODE_IDS[@]}"; do [ "${NODE_IDS[$i]}" = "$1" ] && { echo $((i + 1)); return 0; }; done; return 1; }
node_name() { echo "vbe2e-$1"; }
node_ip() { echo "10.244.0.1$(node_index "$1")"; }
node_pod_cidr() { echo "10.244.$(node_index "$1").0/24"; }
# node_id NAME: the ID (a, b) of a node name.
node_id() { echo "${1#vbe2e-}"; }

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
    local id n
    for id in "${NODE_IDS[@]}"; do
      n=$(node_name "$id")
      sign "kubelet-$id" "system:node:$n" system:nodes "subjectAltName=IP:$(node_ip "$id"),IP:127.0.0.1,DNS:localhost,DNS:$n"
    done
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  )
  local u id
  for u in admin kcm sched; do
    write_kubeconfig "$d/$u.kubeconfig" --client-certificate="$d/$u.crt" --client-key="$d/$u.key"
  done
  for id in "${NODE_IDS[@]}"; do
    write_kubeconfig "$d/kubelet-$id.kubeconfig" --client-certificate="$d/kubelet-$id.crt" --client-key="$d/kubelet-$id.key"
  done
}

# write_kubeconfig FILE CREDENTIAL-FLAGS...: a kubeconfig for this cluster
# (credentials: --client-certificate/--client-key, embedded, or --token).
# The server is the API server's address on the cluster network, which the
# host and every node reach.
write_kubeconfig() {
  local f=$1; shift
  local embed=(); [[ "$*" == *--client-certificate* ]] && embed=(--embed-certs)
  "$BIN/kubectl" config --kubeconfig="$f" set-cluster e2e --server="$API_URL" \
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
    --kubelet-preferred-address-types=InternalIP \
    --service-account-key-file="$p/sa.pub" --service-account-signing-key-file="$p/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --api-audiences=https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range=10.0.0.0/24 \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --allow-privileged=true
  wait_until 120 "kube-apiserver ready" kc get --raw /readyz
}

# NODE_GRACE: how long a node may be silent before the controller manager
# marks it NotReady (the partition scenario waits for that).
NODE_GRACE=${VB_E2E_NODE_GRACE:-30s}
start_controller_manager_scheduler() {
  local p=$R/pki
  start_bg kube-controller-manager "$BIN/kube-controller-manager" --kubeconfig="$p/kcm.kubeconfig" \
    --authentication-kubeconfig="$p/kcm.kubeconfig" --authorization-kubeconfig="$p/kcm.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port=$((APISERVER_PORT + 1)) --leader-elect=false \
    --service-account-private-key-file="$p/sa.key" --root-ca-file="$p/ca.crt" \
    --cluster-signing-cert-file="$p/ca.crt" --cluster-signing-key-file="$p/ca.key" \
    --use-service-account-credentials=true --controllers='*' \
    --service-cluster-ip-range=10.0.0.0/24 --node-monitor-grace-period="$NODE_GRACE"
  start_bg kube-scheduler "$BIN/kube-scheduler" --kubeconfig="$p/sched.kubeconfig" \
    --authentication-kubeconfig="$p/sched.kubeconfig" --authorization-kubeconfig="$p/sched.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port=$((APISERVER_PORT + 2)) --leader-elect=false
  wait_until 90 "default ServiceAccount (controller-manager working)" kc -n default get serviceaccount default
}

# ---- nodes ------------------------------------------------------------------

NS_DIR=$STATE/ns
# The host directories each node gets its own copy of (node_up).
NODE_DIRS=(/var/lib/kubelet /var/lib/viperblock /run/viperblock /var/log/pods /var/log/containers)
KUBELET_DIR=/var/lib/kubelet

# in_node ID CMD...: CMD in node ID's namespaces.
in_node() {
  local id=$1; shift
  nsenter --mount="$NS_DIR/$id.mnt" --uts="$NS_DIR/$id.uts" --net="/run/netns/$(node_name "$id")" -- "$@"
}
# start_node_bg ID NAME CMD...: start_bg of NAME-ID inside node ID.
start_node_bg() {
  local id=$1 name=$2; shift 2
  start_bg "$name-$id" nsenter --mount="$NS_DIR/$id.mnt" --uts="$NS_DIR/$id.uts" --net="/run/netns/$(node_name "$id")" -- "$@"
}

# node_up ID: the node's namespaces, its link to the cluster network, its
# directories and its cgroup root.
node_up() {
  local id=$1 n ip cidr d
  n=$(node_name "$id"); ip=$(node_ip "$id"); cidr=$(node_pod_cidr "$id")
  ip netns add "$n" || return 1
  ip link add "$n" type veth peer name eth0 netns "$n" || return 1
  ip link set "$n" master "$POD_BRIDGE" up || return 1
  nx() { ip netns exec "$n" "$@"; }
  nx ip link set lo up && nx ip addr add "$ip/24" dev eth0 && nx ip link set eth0 up &&
    nx ip route add default via "$POD_GW" && nx sysctl -qw net.ipv4.ip_forward=1 || return 1
  ip route replace "$cidr" via "$ip" || return 1
  local chain
  for chain in PREROUTING OUTPUT; do
    nx iptables -t nat -A "$chain" -d "$API_VIP/32" -p tcp --dport 443 -j DNAT --to-destination "$POD_GW:$APISERVER_PORT" || return 1
  done
  # Mount and UTS namespaces, kept by bind mounts on a private mount.
  mkdir -p "$NS_DIR" || return 1
  if ! mountpoint -q "$NS_DIR"; then mount --bind "$NS_DIR" "$NS_DIR" || return 1; fi
  mount --make-private "$NS_DIR" || return 1
  touch "$NS_DIR/$id.mnt" "$NS_DIR/$id.uts" || return 1
  unshare --mount="$NS_DIR/$id.mnt" --uts="$NS_DIR/$id.uts" --propagation private hostname "$n" || return 1
  d=$R/nodes/$id
  local dir
  for dir in "${NODE_DIRS[@]}"; do
    mkdir -p "$d$dir" "$dir" || return 1
    in_node "$id" sh -c 'mount --bind "$1" "$2" && mount --make-shared "$2"' - "$d$dir" "$dir" || return 1
  done
  touch "$d$KUBELET_DIR/.vb-e2e"
  # The kubelet's cgroup root in every hierarchy (a new cpuset group has
  # no CPUs or memory nodes until they are set).
  local h
  for h in /sys/fs/cgroup/*/; do
    h=${h%/}
    [ -L "$h" ] && continue
    mkdir -p "$h/$n" || return 1
    if [ -f "$h/cpuset.cpus" ]; then
      cat "$h/cpuset.cpus" >"$h/$n/cpuset.cpus" && cat "$h/cpuset.mems" >"$h/$n/cpuset.mems" || return 1
    fi
  done
}

# node_down ID: removes what node_up made. The node's processes must be
# gone; its mounts go with its mount namespace.
node_down() {
  local id=$1 n; n=$(node_name "$id")
  node_unmount "$id"
  [ -e "$NS_DIR/$id.mnt" ] && { umount "$NS_DIR/$id.mnt" 2>/dev/null; rm -f "$NS_DIR/$id.mnt"; }
  [ -e "$NS_DIR/$id.uts" ] && { umount "$NS_DIR/$id.uts" 2>/dev/null; rm -f "$NS_DIR/$id.uts"; }
  ip route del "$(node_pod_cidr "$id")" 2>/dev/null
  ip link del "$n" 2>/dev/null
  ip netns del "$n" 2>/dev/null
  find /sys/fs/cgroup/*/"$n" -depth -type d -exec rmdir {} + 2>/dev/null
  return 0
}

# node_mounts ID: the mount points in node ID's mount namespace.
node_mounts() {
  [ -e "$NS_DIR/$1.mnt" ] || return 0
  nsenter --mount="$NS_DIR/$1.mnt" -- cat /proc/self/mounts 2>/dev/null | awk '{print $2}'
}

# node_unmount ID: unmounts, inside node ID, every volume mount and the
# node's own directories.
node_unmount() {
  local id=$1 i m left
  [ -e "$NS_DIR/$id.mnt" ] || return 0
  for i in 1 2 3 4 5; do
    left=$(node_mounts "$id" | awk -v k="$KUBELET_DIR" '$1 == k || index($1, k "/") == 1 ||
      $1 == "/run/viperblock" || index($1, "/run/viperblock/") == 1 || $1 == "/var/lib/viperblock" ||
      $1 == "/var/log/pods" || $1 == "/var/log/containers" || index($1, "/run/netns/cni-") == 1' | sort -r)
    [ -z "$left" ] && return 0
    for m in $left; do
      nsenter --mount="$NS_DIR/$id.mnt" -- sh -c 'umount "$1" 2>/dev/null || umount -l "$1" 2>/dev/null || fusermount3 -uz "$1" 2>/dev/null' - "$m"
    done
    sleep 0.5
  done
  log "WARNING: still mounted in node $id: $(node_mounts "$id" | grep -E "^($KUBELET_DIR|/run/viperblock)" | tr '\n' ' ')"
}

# node_partition ID on|off [PORT...]: node ID loses (on) or regains (off)
# its route to the host's address, where the API server and the store
# listen: what it sends there (only to the TCP ports PORT..., if given) is
# dropped, from the node itself (hostNetwork pods, the kubelet) and from
# its pods. With no PORT that includes the node's answers to the host;
# with PORTs, connections the host opens to the node still work.
node_partition() {
  local n id=$1 what=$2; shift 2
  n=$(node_name "$id")
  local op=-I; [ "$what" = off ] && op=-D
  local chain ok=0 p
  for chain in OUTPUT FORWARD; do
    if [ $# = 0 ]; then
      ip netns exec "$n" iptables "$op" "$chain" -d "$POD_GW/32" -j DROP || ok=1
    fi
    for p in "$@"; do
      ip netns exec "$n" iptables "$op" "$chain" -d "$POD_GW/32" -p tcp --dport "$p" -j DROP || ok=1
    done
  done
  return $ok
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

# containerd_sock ID: node ID's containerd (a path on the host's file
# system: the host's ctr reaches it too).
containerd_sock() { echo "$STATE/$1/containerd.sock"; }
# ctr_on ID ARGS...: ctr against node ID's containerd; ctr_ ARGS...: against
# every node's, in turn (image imports).
ctr_on() { local id=$1; shift; ctr -a "$(containerd_sock "$id")" -n k8s.io "$@"; }
ctr_() {
  local id rc=0
  for id in "${NODE_IDS[@]}"; do ctr_on "$id" "$@" || rc=1; done
  return $rc
}

start_containerd() {
  local id=$1 c=$R/nodes/$1/containerd cidr gw
  cidr=$(node_pod_cidr "$id"); gw=${cidr%.0/24}.1
  mkdir -p "$c/net.d" "$STATE/$id"
  cat >"$c/config.toml" <<EOF
version = 2
root = "$c/root"
state = "$STATE/$id/state"
[grpc]
  address = "$(containerd_sock "$id")"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$c/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
EOF
  cat >"$c/net.d/10-vbe2e.conflist" <<EOF
{"cniVersion":"0.4.0","name":"vbe2e","plugins":[
  {"type":"bridge","bridge":"cni0","isGateway":true,"ipMasq":false,"hairpinMode":true,
   "ipam":{"type":"host-local","dataDir":"$c/ipam","ranges":[[{"subnet":"$cidr","gateway":"$gw"}]],
           "routes":[{"dst":"0.0.0.0/0"}]}},
  {"type":"portmap","capabilities":{"portMappings":true}}]}
EOF
  start_node_bg "$id" containerd containerd --config "$c/config.toml"
  wait_until 60 "containerd of node $id" ctr -a "$(containerd_sock "$id")" version
}

# Images: pause (the sandbox) and busybox (every test pod), built here from
# the harness's pause and Debian's static busybox: nothing is pulled. Each
# is imported into every node's containerd.
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
  ctr_ images import "$i/pause.tar" >/dev/null && ctr_ images import "$i/busybox.tar" >/dev/null
}

# pod_network_up: the cluster network's bridge with the host's address on
# it (so the API server and the store answer there before any node
# exists), and forwarding between the nodes.
pod_network_up() {
  ip link show "$POD_BRIDGE" >/dev/null 2>&1 || ip link add "$POD_BRIDGE" type bridge || return 1
  ip addr replace "$POD_GW/24" dev "$POD_BRIDGE" && ip link set "$POD_BRIDGE" up || return 1
  sysctl -qw net.ipv4.ip_forward=1
}

pod_network_down() {
  ip link del "$POD_BRIDGE" 2>/dev/null
  return 0
}

start_kubelet() {
  local id=$1 n ip; n=$(node_name "$id"); ip=$(node_ip "$id")
  cat >"$R/nodes/$id/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $R/pki/ca.crt}
authorization: {mode: Webhook}
address: $ip
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $R/pki/kubelet-$id.crt
tlsPrivateKeyFile: $R/pki/kubelet-$id.key
cgroupDriver: cgroupfs
cgroupRoot: /$n
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$(containerd_sock "$id")
imageServiceEndpoint: unix://$(containerd_sock "$id")
resolvConf: /etc/resolv.conf
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
syncFrequency: 10s
fileCheckFrequency: 10s
EOF
  start_node_bg "$id" kubelet "$BIN/kubelet" --config="$R/nodes/$id/kubelet-config.yaml" \
    --kubeconfig="$R/pki/kubelet-$id.kubeconfig" --hostname-override="$n" --node-ip="$ip" --root-dir="$KUBELET_DIR"
}

node_ready() {
  kc get node "$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grepq -x True
}

nodes_up() {
  local id
  for id in "${NODE_IDS[@]}"; do
    node_up "$id" || { log "node $id: namespaces"; return 1; }
    start_containerd "$id" || return 1
  done
  import_images || return 1
  for id in "${NODE_IDS[@]}"; do start_kubelet "$id" || return 1; done
  for id in "${NODE_IDS[@]}"; do
    wait_until 120 "node $(node_name "$id") registered" kc get node "$(node_name "$id")" &&
      kc wait --for=condition=Ready "node/$(node_name "$id")" --timeout=120s >/dev/null || return 1
  done
}

install_snapshot_crds() {
  kc apply -f "$KBIN_DIR/crd/" >/dev/null
  kc wait --for=condition=Established --timeout=60s -f "$KBIN_DIR/crd/" >/dev/null
  start_bg snapshot-controller "$BIN/snapshot-controller" --kubeconfig="$R/pki/admin.kubeconfig" --leader-election=false --v=2
}

# cluster_up: everything up to two Ready nodes with the snapshot API.
cluster_up() {
  step "cluster network" pod_network_up || return 1
  step "PKI" make_pki || return 1
  step "etcd" start_etcd || return 1
  step "kube-apiserver" start_apiserver || return 1
  step "controller-manager + scheduler" start_controller_manager_scheduler || return 1
  step "nodes: namespaces, containerd, images, kubelet, Ready" nodes_up || return 1
  step "snapshot CRDs + snapshot-controller" install_snapshot_crds || return 1
}

# cluster_down: stops everything the harness started, in order (the
# driver runs in pods: their containers go with the kubelets'), then sweeps
# the cgroups (shims, the volume servers, anything that escaped a PID file),
# unmounts what is left in each node, detaches loop devices backed there
# and removes the nodes. Safe to run twice and on a half-started cluster.
cluster_down() {
  local n id t
  stop_bg snapshot-controller
  for id in "${NODE_IDS[@]}"; do stop_bg "kubelet-$id"; done
  for id in "${NODE_IDS[@]}"; do
    if running "containerd-$id"; then
      for t in $(ctr_on "$id" tasks ls -q 2>/dev/null); do ctr_on "$id" tasks kill -s KILL "$t" >/dev/null 2>&1; done
      sleep 1
      for t in $(ctr_on "$id" tasks ls -q 2>/dev/null); do ctr_on "$id" tasks delete -f "$t" >/dev/null 2>&1; done
      for t in $(ctr_on "$id" containers ls -q 2>/dev/null); do ctr_on "$id" containers delete "$t" >/dev/null 2>&1; done
    fi
    stop_bg "containerd-$id"
  done
  for n in kube-scheduler kube-controller-manager kube-apiserver etcd store; do stop_bg "$n"; done
  sweep_kubepods
  sweep_cgroup
  # The volume servers the node plugins placed outside their containers.
  sweep_cgroup_named "$SERVER_CGROUP"
  for id in "${NODE_IDS[@]}"; do node_unmount "$id"; done
  detach_loops
  sweep_cgroup
  for id in "${NODE_IDS[@]}"; do node_down "$id"; done
  # The pods' network namespace files: containerd mounts them in the
  # nodes' mount namespaces, but the files are made in the host's
  # /run/netns; with the nodes gone they are empty files, mounted nowhere.
  local f
  for f in /run/netns/cni-*; do
    [ -f "$f" ] && ! mountpoint -q "$f" && rm -f "$f"
  done
  pod_network_down
  unmount_run_dir
  for n in "${NODE_DIRS[@]}"; do rmdir "$n" 2>/dev/null; done
  rm -rf "${STATE:?}"/[a-z]
  if mountpoint -q "$NS_DIR"; then umount "$NS_DIR" 2>/dev/null; fi
  rmdir "$NS_DIR" 2>/dev/null
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
# Both nodes' plugins use it (the nodes share the host's cgroups): it only
# keeps the servers out of the plugins' containers.
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

# sweep_kubepods kills the pod processes the kubelets left: everything
# under the nodes' cgroup roots.
sweep_kubepods() {
  local id d pids i
  for id in "${NODE_IDS[@]}"; do
    d=/sys/fs/cgroup/pids/$(node_name "$id")
    [ -d "$d" ] || continue
    for i in $(seq 1 10); do
      pids=$(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null)
      [ -z "$pids" ] && break
      kill -KILL $pids 2>/dev/null
      sleep 0.5
    done
  done
  return 0
}

# unmount_run_dir unmounts anything left under the run dir and the state
# dir in the host's own mount namespace.
unmount_run_dir() {
  local i m left
  for i in 1 2 3; do
    left=$(awk -v r="$R" -v s="$STATE" '$2 == r || index($2, r "/") == 1 || (index($2, s "/") == 1 && $2 != s "/ns")' /proc/mounts | awk '{print $2}' | sort -r)
    [ -z "$left" ] && return 0
    for m in $left; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || fusermount3 -uz "$m" 2>/dev/null; done
    sleep 0.5
  done
}

detach_loops() {
  local l f
  for l in /sys/block/loop*; do
    f=$(cat "$l/loop/backing_file" 2>/dev/null) || continue
    case "$f" in "$R"/* | "$STATE"/* | /run/viperblock/* | /var/lib/kubelet/*) losetup -d "/dev/$(basename "$l")" 2>/dev/null && log "detached /dev/$(basename "$l") ($f)" ;; esac
  done
}
