package driver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/viperblock/viperblock-csi/pkg/attach"
	"github.com/viperblock/viperblock-csi/pkg/units"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

// envStore is the environment variable the nbdkit plugin reads the store
// URL from (cmd/nbdkit-plugin: VBLOCK_STORE), so it is not on nbdkit's
// command line.
const envStore = "VBLOCK_STORE"

// NodeDeps are the node service's side effects; nil fields get the real
// implementations (except Attacher, which the caller chooses).
type NodeDeps struct {
	Attacher   attach.Attacher
	Supervisor Supervisor
	Mounter    Mounter
	Open       storeOpener
	// Kube, if set, is used to post Events on the claims of volumes
	// whose health changes (events.go).
	Kube kubernetes.Interface
}

// NodeServer is the CSI Node service. For each staged volume it runs one
// nbdkit (the viperblock plugin serving the volume on a Unix socket),
// attaches it as a block device, and for filesystem volumes mounts it at
// the staging path.
type NodeServer struct {
	csi.UnimplementedNodeServer
	opts    *Options
	att     attach.Attacher
	sup     Supervisor
	mnt     Mounter
	stores  *storeSet // every store handle: the node's own and each staged volume's
	servers servers   // the nbdkit of each staged volume (servers.go)
	metrics *Metrics
	locks   inflight      // per volume ID
	events  *healthEvents // nil without NodeDeps.Kube

	vsOnce sync.Once
	vs     int64 // virtual_size= for nbdkit (0: not passed); see virtualSize

	memOnce sync.Once
	mem     int64 // memory= for nbdkit (0: not passed); see volumeMemory

	slotMu  sync.Mutex // guards staging
	staging int        // new stages in progress (takeSlot)
	pmOnce  sync.Once
	pm      bool // the plugin takes metrics=; see pluginMetrics
}

// NewNodeServer builds the node service. Call Heal after it to re-adopt
// what an earlier process left staged.
func NewNodeServer(opts *Options, deps NodeDeps) (*NodeServer, error) {
	if err := opts.ValidateNode(); err != nil {
		return nil, err
	}
	if deps.Attacher == nil {
		return nil, errors.New("node: an attacher is required")
	}
	if deps.Supervisor == nil {
		sup, err := newNodeSupervisor(opts)
		if err != nil {
			return nil, err
		}
		deps.Supervisor = sup
	}
	if deps.Mounter == nil {
		deps.Mounter = NewMounter()
	}
	if deps.Open == nil {
		deps.Open = backend.Open
	}
	for _, d := range []string{opts.StateDir, filepath.Join(opts.StateDir, "volumes"), filepath.Join(opts.StateDir, "sock"),
		filepath.Join(opts.StateDir, "creds"), opts.WALDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	n := &NodeServer{opts: opts, att: deps.Attacher, sup: deps.Supervisor, mnt: deps.Mounter, metrics: DefaultMetrics(),
		stores: newStoreSet(opts, filepath.Join(opts.StateDir, "creds"), deps.Open)}
	klog.InfoS("memory budget", "budget", units.Format(opts.MemoryBudget), "from", opts.budgetWhy,
		"maxVolumesPerNode", opts.MaxVolumesPerNode, "perVolume", units.Format(opts.VolumeMemory()))
	if deps.Kube != nil {
		n.events = newHealthEvents(deps.Kube, opts.NodeID, opts.DriverName)
	}
	return n, nil
}

// Register writes this node's record into every store it can open with
// its own credentials (for --node-check=store on the controller).
func (n *NodeServer) Register(ctx context.Context) {
	for _, name := range n.stores.names() {
		st, err := n.stores.get(ctx, name, nil)
		if err == nil {
			err = registerNode(ctx, st, n.opts.NodeID)
		}
		if err != nil {
			klog.InfoS("could not register this node in a store (it registers at its next NodeStage there)", "store", name, "err", err)
		}
	}
}

// Close stops healing and closes store handles. Staged volumes keep
// running: nbdkit and the attachments outlive the node plugin.
func (n *NodeServer) Close() {
	n.servers.close()
	n.stores.close()
}

// NodeGetCapabilities lists the node's capabilities.
func (n *NodeServer) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	var caps []*csi.NodeServiceCapability
	for _, t := range []csi.NodeServiceCapability_RPC_Type{
		csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
		csi.NodeServiceCapability_RPC_EXPAND_VOLUME,
		csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
		csi.NodeServiceCapability_RPC_GET_VOLUME_HEALTH,
		csi.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
	} {
		caps = append(caps, &csi.NodeServiceCapability{Type: &csi.NodeServiceCapability_Rpc{Rpc: &csi.NodeServiceCapability_RPC{Type: t}}})
	}
	return &csi.NodeGetCapabilitiesResponse{Capabilities: caps}, nil
}

// NodeGetInfo returns the node ID. Volumes have no topology: any node can
// open any volume from its store.
func (n *NodeServer) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{NodeId: n.opts.NodeID, MaxVolumesPerNode: n.opts.MaxVolumesPerNode}, nil
}

// volumeURL is the store URL nbdkit and the node use for a volume: the
// configured one, with the volume's credentials file if it has one.
func (n *NodeServer) volumeURL(id volumeID, st *volState) (string, error) {
	raw, ok := n.opts.Stores[id.Store]
	if !ok {
		return "", fmt.Errorf("store %q is not configured on this node: %w", id.Store, backend.ErrNotFound)
	}
	if !st.Creds {
		return raw, nil
	}
	return withCredentialsFile(raw, n.paths(id).Creds)
}

// volumeStore opens (or reuses) the store handle for a volume's URL.
func (n *NodeServer) volumeStore(ctx context.Context, url string) (backend.Store, error) {
	return n.stores.byURL(ctx, url, nil)
}

// spec is the nbdkit command for a volume.
func (n *NodeServer) spec(id volumeID, st *volState, url string) nbdkitSpec {
	p := n.paths(id)
	params := []string{"volume=" + id.Vol}
	if st.ReadOnly {
		params = append(params, "readonly=true")
	} else {
		params = append(params, "wal_dir="+p.WALDir)
	}
	if st.Standby {
		params = append(params, "standby=true")
	}
	if st.Cache != "" {
		params = append(params, "cache="+st.Cache)
	}
	if st.Key {
		params = append(params, "encryption_key_file="+p.Key)
	}
	if mem := n.volumeMemory(); mem > 0 {
		params = append(params, fmt.Sprintf("memory=%d", mem))
	}
	if st.Durability != "" {
		params = append(params, "durability="+st.Durability)
	}
	if st.Lease != "" {
		params = append(params, "lease_duration="+st.Lease)
	}
	if st.Drain != "" {
		params = append(params, "drain_interval="+st.Drain)
	}
	if vs := n.virtualSize(); vs > 0 {
		params = append(params, fmt.Sprintf("virtual_size=%d", vs))
	}
	if n.pluginMetrics() {
		params = append(params, "metrics="+p.Metrics)
	}
	return nbdkitSpec{
		Nbdkit: n.opts.Nbdkit, Plugin: n.opts.Plugin, Socket: p.Socket, Pidfile: p.Pidfile, Status: p.Status, LogFile: p.Log,
		Wrapper: n.opts.NbdkitWrapper,
		Params:  params, Env: []string{envStore + "=" + url}, Threads: n.opts.NbdkitThreads, Ready: n.opts.ReadyTimeout,
	}
}

// export is the volume's NBD export; the device shows st.Size bytes.
func (n *NodeServer) export(id volumeID, st *volState) attach.Export {
	return attach.Export{Socket: n.paths(id).Socket, ID: id.key(), ReadOnly: st.ReadOnly, Size: st.Size}
}

// CheckStores runs the store self-test (see storeSet.verify) on every
// configured S3 store. An error names the stores that failed it; the node
// plugin refuses to start on them.
func (n *NodeServer) CheckStores(ctx context.Context) error { return n.stores.checkAll(ctx) }
