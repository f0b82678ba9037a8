package driver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/viperblock/viperblock-csi/pkg/attach"
	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/vfs"
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
	open    storeOpener
	stores  *storeSet
	metrics *Metrics
	locks   inflight // per volume ID

	vsOnce sync.Once
	vs     int64 // virtual_size= for nbdkit (0: not passed); see virtualSize

	mu     sync.Mutex
	run    map[string]*volRuntime   // guarded by mu: nbdkit of each staged volume, by volume key
	cache  map[string]backend.Store // guarded by mu: store handles by URL
	closed bool                     // guarded by mu: Close was called; no more healing
}

// volRuntime tracks a volume's nbdkit.
type volRuntime struct {
	srv      server
	stopping bool      // an unstage is stopping it: its exit is expected
	died     time.Time // it exited unexpectedly at this time (zero while it runs)
	broken   string    // why the device no longer reaches nbdkit ("" while it does)
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
		deps.Supervisor = NewSupervisor()
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
	n := &NodeServer{opts: opts, att: deps.Attacher, sup: deps.Supervisor, mnt: deps.Mounter, open: deps.Open,
		metrics: DefaultMetrics(), run: map[string]*volRuntime{}, cache: map[string]backend.Store{}}
	n.stores = newStoreSet(opts, filepath.Join(opts.StateDir, "creds"), deps.Open)
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
	n.mu.Lock()
	n.closed = true
	for k, st := range n.cache {
		st.Close()
		delete(n.cache, k)
	}
	n.mu.Unlock()
	n.stores.close()
}

// virtualSize is the size nbdkit advertises when it is larger than the
// volume, so a device can grow while attached (see pkg/attach: nbdfuse
// learns the export size once). --virtual-size: -1 (auto) passes the
// largest volume size when the plugin knows the virtual_size= parameter;
// 0 never passes it.
func (n *NodeServer) virtualSize() int64 {
	n.vsOnce.Do(func() {
		switch {
		case n.opts.VirtualSize > 0:
			n.vs = n.opts.VirtualSize
		case n.opts.VirtualSize < 0:
			out, _ := exec.Command(n.opts.Nbdkit, n.opts.Plugin, "--help").CombinedOutput()
			if strings.Contains(string(out), "virtual_size") {
				n.vs = maxVolumeSize
			} else {
				klog.InfoS("the nbdkit plugin has no virtual_size= parameter: attached volumes grow only where the attacher can follow the export size (kernel NBD), or after restaging", "plugin", n.opts.Plugin)
			}
		}
	})
	return n.vs
}

func (n *NodeServer) probe(context.Context) error {
	if _, err := exec.LookPath(n.opts.Nbdkit); err != nil {
		return fmt.Errorf("%w: nbdkit: %v", errUnavailable, err)
	}
	if _, err := os.Stat(n.opts.Plugin); err != nil {
		return fmt.Errorf("%w: plugin: %v", errUnavailable, err)
	}
	return nil
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

// volumeStore opens (or reuses) a store handle for url.
func (n *NodeServer) volumeStore(ctx context.Context, url string) (backend.Store, error) {
	n.mu.Lock()
	st, ok := n.cache[url]
	n.mu.Unlock()
	if ok {
		return st, nil
	}
	st, err := n.open(ctx, url)
	if err != nil {
		return nil, err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if old, ok := n.cache[url]; ok {
		st.Close()
		return old, nil
	}
	n.cache[url] = st
	return st, nil
}

func (n *NodeServer) dropStore(url string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if st, ok := n.cache[url]; ok {
		st.Close()
		delete(n.cache, url)
	}
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
	if st.Cache != "" {
		params = append(params, "cache="+st.Cache)
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

// setBroken records (or clears) why the volume's device cannot reach nbdkit.
func (n *NodeServer) setBroken(id volumeID, why string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if rt := n.run[id.key()]; rt != nil {
		rt.broken = why
	}
}

// brokenReason says why the volume's device cannot reach nbdkit, if so.
func (n *NodeServer) brokenReason(id volumeID) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if rt := n.run[id.key()]; rt != nil {
		return rt.broken
	}
	return ""
}

// running returns the volume's nbdkit if it runs.
func (n *NodeServer) running(id volumeID) server {
	n.mu.Lock()
	defer n.mu.Unlock()
	rt := n.run[id.key()]
	if rt == nil {
		return nil
	}
	select {
	case <-rt.srv.Done():
		return nil
	default:
		return rt.srv
	}
}

// ensureServer makes sure the volume's nbdkit runs: the one already
// tracked, one adopted from its pidfile, or a new one. A new nbdkit takes
// ownership of the volume, an adopted one already has it.
//
// resume is set for a reopen on the node's own initiative (the healer, an
// unstage serving the volume once more to drain it): a new nbdkit then
// starts only while the volume is still this node's (checkOwner), and with
// resume_only=true, so that the engine itself refuses to take the volume
// back should another owner take it over between that check and nbdkit's
// open. Such a refusal is errOwnedElsewhere, as the check's own is. (With
// no OWNER file in the WAL directory there is nothing for the engine to
// check against: the reopen relies on the check alone, as NodeStage's
// ownership is recorded only in the state file's epoch then.)
func (n *NodeServer) ensureServer(ctx context.Context, id volumeID, st *volState, url string, resume bool) (server, error) {
	if srv := n.running(id); srv != nil {
		return srv, nil
	}
	p := n.paths(id)
	for _, d := range []string{p.Dir, filepath.Dir(p.Socket), p.WALDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	spec := n.spec(id, st, url)
	srv, ok, err := n.sup.Adopt(spec)
	if err != nil {
		return nil, err
	}
	if ok {
		klog.InfoS("adopted running nbdkit", "volume", id, "pid", srv.Pid())
	} else {
		if resume && !st.ReadOnly {
			recorded, err := n.restartCheck(ctx, id, st, url)
			if err != nil {
				return nil, err
			}
			if recorded {
				spec.Params = append(spec.Params, "resume_only=true")
			}
		}
		srv, err = n.sup.Start(ctx, spec)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", errNbdkit, err)
		}
		klog.InfoS("started nbdkit", "volume", id, "pid", srv.Pid(), "socket", p.Socket)
	}
	n.track(id, srv)
	return srv, nil
}

// errNbdkit: nbdkit could not be started (its log says why).
var errNbdkit = errors.New("nbdkit failed")

// track records srv as the volume's nbdkit and watches it.
func (n *NodeServer) track(id volumeID, srv server) {
	n.mu.Lock()
	rt := &volRuntime{srv: srv}
	if old := n.run[id.key()]; old != nil {
		rt.broken = old.broken // a new server does not mend the device's connection
	}
	n.run[id.key()] = rt
	n.mu.Unlock()
	go n.watch(id, srv)
}

// watch notices an nbdkit that exits while its volume is staged, and has
// the healer restart it.
func (n *NodeServer) watch(id volumeID, srv server) {
	<-srv.Done()
	n.mu.Lock()
	rt := n.run[id.key()]
	expected := rt == nil || rt.srv != srv || rt.stopping || n.closed
	if !expected {
		rt.died = time.Now()
	}
	n.mu.Unlock()
	if expected {
		return
	}
	klog.ErrorS(nil, "nbdkit exited while its volume is staged; the healer restarts it if the volume is still this node's", "volume", id, "pid", srv.Pid(),
		"log", logTail(n.paths(id).Log, -1))
	go n.healLater(id)
}

// NodeStageVolume starts nbdkit for the volume, attaches it as a block
// device and, for a filesystem volume, formats it if blank and mounts it at
// the staging path. Every step is idempotent, so a retry after a failure
// (or after a restart of this plugin) resumes where it stopped.
func (n *NodeServer) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	if err := required("volume_id", req.GetVolumeId(), "staging_target_path", req.GetStagingTargetPath()); err != nil {
		return nil, err
	}
	acc, err := checkCapability(req.GetVolumeCapability())
	if err != nil {
		return nil, invalidArg("%v", err)
	}
	id, err := parseVolumeID(req.GetVolumeId())
	if err != nil {
		return nil, status.Errorf(codes.NotFound, "%v", err)
	}
	if _, ok := n.opts.Stores[id.Store]; !ok {
		return nil, status.Errorf(codes.NotFound, "volume %s: store %q is not configured on this node", id, id.Store)
	}
	vp, err := parseVolumeContext(req.GetVolumeContext())
	if err != nil {
		return nil, invalidArg("%v", err)
	}
	fsType := acc.FsType
	if fsType == "" {
		fsType = vp.FsType
	}
	if fsType == "" {
		fsType = "ext4"
	}
	if acc.Block {
		fsType = ""
	} else if err := checkMkfsOptions(fsType, vp.MkfsOptions); err != nil {
		return nil, invalidArg("volume %s: %v", id, err)
	}
	what := "stage volume " + id.String()
	release, err := n.locks.acquire(id.String())
	if err != nil {
		return nil, toStatus(err, what)
	}
	defer release()

	st, existed, err := n.loadState(id)
	if err != nil {
		return nil, toStatus(err, what)
	}
	if existed && st.Fenced != "" {
		// The healer left the volume closed: another owner took it over.
		// Staging it again here is a new stage, which takes ownership:
		// tear the old one down first (its WAL is quarantined).
		klog.InfoS("staging a volume that another owner had taken over from this node: starting afresh", "volume", id)
		if err := n.unstage(ctx, id, st); err != nil {
			return nil, toStatus(err, what)
		}
		existed = false
	}
	if existed {
		if st.StagingPath != req.GetStagingTargetPath() {
			return nil, status.Errorf(codes.AlreadyExists, "volume %s is staged at %s", id, st.StagingPath)
		}
		if st.Block != acc.Block || st.FsType != fsType || st.ReadOnly != acc.readOnly() {
			return nil, status.Errorf(codes.AlreadyExists, "volume %s is staged with another capability (block %v, fs %q, read-only %v)", id, st.Block, st.FsType, st.ReadOnly)
		}
	} else {
		st = &volState{StagingPath: req.GetStagingTargetPath(), Block: acc.Block, FsType: fsType, MountFlags: acc.MountFlags,
			Mode: acc.Mode.String(), ReadOnly: acc.readOnly(), MkfsOptions: vp.MkfsOptions, Cache: vp.Cache, Drain: vp.DrainInterval,
			Durability: vp.Durability, Lease: vp.LeaseDuration}
	}
	if err := n.stage(ctx, id, st, req.GetSecrets()); err != nil {
		if !existed {
			n.rollback(id, st)
		}
		return nil, toStatus(err, what)
	}
	return &csi.NodeStageVolumeResponse{}, nil
}

// stage runs (or resumes) every staging step.
func (n *NodeServer) stage(ctx context.Context, id volumeID, st *volState, secrets map[string]string) error {
	p := n.paths(id)
	// Durably: the healer finds staged volumes by their directories.
	if err := vfs.MkdirAllDurable(vfs.Default, p.Dir); err != nil {
		return err
	}
	creds, err := credentials(secrets)
	if err != nil {
		return err
	}
	if creds != nil {
		if err := writePrivateFile(p.Creds, creds); err != nil {
			return fmt.Errorf("write credentials: %w", err)
		}
		st.Creds = true
	}
	url, err := n.volumeURL(id, st)
	if err != nil {
		return err
	}
	if err := n.saveState(id, st); err != nil {
		return err
	}
	store, err := n.volumeStore(ctx, url)
	if err != nil {
		return err
	}
	inf, err := vb.Inspect(ctx, store, id.Vol)
	if err != nil {
		return err
	}
	if st.Size == 0 || inf.Size > st.Size {
		st.Size = inf.Size
	}
	if err := registerNode(ctx, store, n.opts.NodeID); err != nil {
		klog.InfoS("could not register this node in the store", "store", id.Store, "err", err)
	}
	fresh := n.running(id) == nil
	// NodeStage takes ownership: the CO published the volume to this node.
	if _, err := n.ensureServer(ctx, id, st, url, false); err != nil {
		return err
	}
	if fresh && !st.ReadOnly {
		if err := n.recordOwner(ctx, id, st, store); err != nil {
			return err
		}
	}
	dev, err := n.att.Attach(ctx, n.export(id, st))
	if err != nil {
		return fmt.Errorf("attach: %w", err)
	}
	st.Device = dev.Path
	if err := n.saveState(id, st); err != nil {
		return err
	}
	if !st.Block {
		if err := n.mountStaging(dev.Path, st); err != nil {
			return err
		}
	}
	st.Staged = true
	if err := n.saveState(id, st); err != nil {
		return err
	}
	klog.InfoS("staged volume", "volume", id, "device", dev.Path, "path", st.StagingPath, "fs", st.FsType, "readonly", st.ReadOnly)
	return nil
}

// mountStaging formats (if blank) and mounts the device at the staging
// path, growing the filesystem if the volume grew while unstaged: ext4
// before the mount (offline), others after it.
func (n *NodeServer) mountStaging(dev string, st *volState) error {
	if err := os.MkdirAll(st.StagingPath, 0o750); err != nil {
		return err
	}
	mounted, err := n.mnt.IsMountPoint(st.StagingPath)
	if err != nil {
		return err
	}
	if mounted {
		return nil
	}
	opts := append([]string{}, st.MountFlags...)
	if st.ReadOnly {
		opts = append(opts, "ro")
	} else if err := n.mnt.GrowUnmounted(dev); err != nil {
		// An ext4 that the volume outgrew while unstaged grows here,
		// before the mount: online growth can be refused by the kernel.
		return fmt.Errorf("grow filesystem: %w", err)
	}
	if err := n.mnt.FormatAndMount(dev, st.StagingPath, st.FsType, opts, st.MkfsOptions); err != nil {
		return fmt.Errorf("format and mount %s at %s: %w", dev, st.StagingPath, err)
	}
	if !st.ReadOnly {
		if err := n.mnt.ResizeFS(dev, st.StagingPath); err != nil {
			return fmt.Errorf("grow filesystem: %w", err)
		}
	}
	return nil
}

// rollback undoes a first NodeStage that failed part-way, so nothing is
// left running for a volume the CO does not consider staged.
func (n *NodeServer) rollback(id volumeID, st *volState) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := n.unstage(ctx, id, st); err != nil {
		klog.ErrorS(err, "could not undo a failed stage; NodeUnstageVolume will retry", "volume", id)
	}
}

// NodeUnstageVolume unmounts, detaches, stops nbdkit (which drains the
// volume to the store) and, once the store holds everything, removes the
// node's state and WAL. If the drain did not complete, the WAL stays and
// the call fails; a retry drains it.
func (n *NodeServer) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	if err := required("volume_id", req.GetVolumeId(), "staging_target_path", req.GetStagingTargetPath()); err != nil {
		return nil, err
	}
	id, err := parseVolumeID(req.GetVolumeId())
	if err != nil {
		return &csi.NodeUnstageVolumeResponse{}, nil
	}
	what := "unstage volume " + id.String()
	release, err := n.locks.acquire(id.String())
	if err != nil {
		return nil, toStatus(err, what)
	}
	defer release()
	st, ok, err := n.loadState(id)
	if err != nil {
		return nil, toStatus(err, what)
	}
	if !ok {
		return &csi.NodeUnstageVolumeResponse{}, nil
	}
	if err := n.unstage(ctx, id, st); err != nil {
		return nil, toStatus(err, what)
	}
	return &csi.NodeUnstageVolumeResponse{}, nil
}

// unstage tears a volume down; see NodeUnstageVolume.
func (n *NodeServer) unstage(ctx context.Context, id volumeID, st *volState) error {
	p := n.paths(id)
	for _, t := range st.Targets {
		if m, err := n.mnt.IsMountPoint(t); err == nil && m {
			return fmt.Errorf("%w: volume %s is still published at %s", errBusy, id, t)
		}
	}
	if !st.Block && st.StagingPath != "" {
		m, err := n.mnt.IsMountPoint(st.StagingPath)
		if err != nil && !isNotExist(err) {
			return err
		}
		if m {
			if err := n.mnt.Unmount(st.StagingPath); err != nil {
				return fmt.Errorf("unmount %s: %w", st.StagingPath, err)
			}
		}
	}
	if err := n.att.Detach(ctx, id.key()); err != nil && !errors.Is(err, attach.ErrNotAttached) {
		return fmt.Errorf("detach: %w", err)
	}
	st.Device = ""
	url, err := n.volumeURL(id, st)
	if err != nil {
		return err
	}
	clean, err := n.stopAndDrain(ctx, id, st, url)
	if err != nil {
		return err
	}
	switch {
	case st.ReadOnly:
	case clean:
		if err := vb.DeleteWAL(nil, p.WALDir, id.Vol); err != nil {
			klog.ErrorS(err, "could not remove the WAL directory of a drained volume", "volume", id)
		}
	default:
		store, err := n.volumeStore(ctx, url)
		if err != nil {
			return err
		}
		if err := n.quarantineWAL(ctx, id, store); err != nil {
			return err
		}
	}
	n.dropStore(url)
	os.Remove(p.Socket)
	if err := os.RemoveAll(p.Dir); err != nil {
		return err
	}
	n.mu.Lock()
	delete(n.run, id.key())
	n.mu.Unlock()
	klog.InfoS("unstaged volume", "volume", id, "drained", clean)
	return nil
}

// stopAndDrain stops the volume's nbdkit and checks that the store now
// holds everything: the volume is no longer open with our ownership. If
// nbdkit had died, it is started once more (it replays the WAL) and stopped
// again so it drains. clean is false when the volume is not ours (another
// node took it over, or staging stopped before our nbdkit opened it): then
// nothing of ours is left to drain, and our WAL, if any, is stale.
func (n *NodeServer) stopAndDrain(ctx context.Context, id volumeID, st *volState, url string) (clean bool, err error) {
	for attempt := 0; ; attempt++ {
		stopErr := n.stopServer(ctx, id, st)
		if stopErr != nil && (ctx.Err() != nil || !errors.Is(stopErr, errNotDrained)) {
			return false, stopErr
		}
		if st.ReadOnly {
			return stopErr == nil, stopErr
		}
		store, err := n.volumeStore(ctx, url)
		if err != nil {
			return false, err
		}
		inf, err := vb.Inspect(ctx, store, id.Vol)
		if errors.Is(err, vb.ErrNotFound) {
			klog.InfoS("volume was deleted from the store while staged; dropping its WAL", "volume", id)
			return true, nil
		}
		if err != nil {
			return false, err
		}
		_, ownErr := n.checkOwner(ctx, id, st, store)
		switch {
		case errors.Is(ownErr, errOwnedElsewhere):
			klog.InfoS("the volume is not this node's (any more): nothing of ours to drain; our unuploaded writes, if any, were fenced",
				"volume", id, "ourEpoch", st.Epoch, "storeEpoch", inf.Epoch, "open", inf.Open)
			return false, nil
		case ownErr != nil:
			return false, ownErr
		case !inf.Open:
			return true, nil
		case stopErr != nil:
			// nbdkit could not drain (the store failed?): the data is in
			// the WAL; the retry serves the volume again to drain it.
			return false, stopErr
		case attempt > 0:
			return false, fmt.Errorf("%w: nbdkit stopped but the volume is still open at epoch %d; its data is in the WAL at %s: %s",
				errNotDrained, inf.Epoch, n.paths(id).WALDir, logTail(n.paths(id).Log, -1))
		}
		// Open with our ownership and no nbdkit: it died before draining.
		klog.InfoS("volume was not drained (nbdkit died?); serving it once more to drain its WAL", "volume", id)
		if _, err := n.ensureServer(ctx, id, st, url, true); errors.Is(err, errOwnedElsewhere) {
			continue // taken over just now: the next round finds it so
		} else if err != nil {
			return false, err
		}
		if err := n.recordOwner(ctx, id, st, store); err != nil {
			return false, err
		}
		if err := n.saveState(id, st); err != nil {
			return false, err
		}
	}
}

// stopServer stops the volume's nbdkit (tracked or adopted) and waits for
// it. If ctx ends first, nbdkit keeps draining and a retry waits again.
func (n *NodeServer) stopServer(ctx context.Context, id volumeID, st *volState) error {
	srv := n.running(id)
	if srv == nil {
		url, err := n.volumeURL(id, st)
		if err != nil {
			return err
		}
		s, ok, err := n.sup.Adopt(n.spec(id, st, url))
		if err != nil {
			return err
		}
		if !ok {
			return nil
		}
		n.track(id, s)
		srv = s
	}
	n.mu.Lock()
	if rt := n.run[id.key()]; rt != nil && rt.srv == srv {
		rt.stopping = true
	}
	n.mu.Unlock()
	if err := srv.Stop(ctx); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("nbdkit is still draining the volume: %w", ctx.Err())
		}
		return fmt.Errorf("%w: %v", errNotDrained, err)
	}
	os.Remove(n.paths(id).Pidfile)
	return nil
}

// NodePublishVolume bind-mounts the staged filesystem (or, for a block
// volume, the device node onto a file) at the target path.
func (n *NodeServer) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	if err := required("volume_id", req.GetVolumeId(), "target_path", req.GetTargetPath(), "staging_target_path", req.GetStagingTargetPath()); err != nil {
		return nil, err
	}
	acc, err := checkCapability(req.GetVolumeCapability())
	if err != nil {
		return nil, invalidArg("%v", err)
	}
	id, err := parseVolumeID(req.GetVolumeId())
	if err != nil {
		return nil, status.Errorf(codes.NotFound, "%v", err)
	}
	what := "publish volume " + id.String()
	release, err := n.locks.acquire(id.String())
	if err != nil {
		return nil, toStatus(err, what)
	}
	defer release()
	st, ok, err := n.loadState(id)
	if err != nil {
		return nil, toStatus(err, what)
	}
	if !ok || !st.Staged {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is not staged on this node", id)
	}
	if st.Fenced != "" {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s: %s", id, st.Fenced)
	}
	if st.StagingPath != req.GetStagingTargetPath() {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is staged at %s, not %s", id, st.StagingPath, req.GetStagingTargetPath())
	}
	if acc.Block != st.Block {
		return nil, invalidArg("volume %s is staged as a %s volume", id, map[bool]string{true: "block", false: "filesystem"}[st.Block])
	}
	target := req.GetTargetPath()
	if acc.Mode == csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER && len(st.Targets) > 0 && !st.hasTarget(target) {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s (single writer) is already published at %s", id, st.Targets[0])
	}
	opts := []string{"bind"}
	if req.GetReadonly() || acc.readOnly() {
		opts = append(opts, "ro")
	}
	if st.Block {
		if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
			return nil, toStatus(err, what)
		}
		f, err := os.OpenFile(target, os.O_CREATE|os.O_RDONLY, 0o600)
		if err != nil {
			return nil, toStatus(err, what)
		}
		f.Close()
	} else {
		opts = append(opts, acc.MountFlags...)
		if err := os.MkdirAll(target, 0o750); err != nil {
			return nil, toStatus(err, what)
		}
	}
	mounted, err := n.mnt.IsMountPoint(target)
	if err != nil {
		return nil, toStatus(err, what)
	}
	if !mounted {
		src := st.StagingPath
		if st.Block {
			src = st.Device
		}
		if err := n.mnt.Mount(src, target, "", opts); err != nil {
			return nil, toStatus(fmt.Errorf("bind %s at %s: %w", src, target, err), what)
		}
	}
	if !st.hasTarget(target) {
		st.Targets = append(st.Targets, target)
		if err := n.saveState(id, st); err != nil {
			return nil, toStatus(err, what)
		}
	}
	klog.InfoS("published volume", "volume", id, "target", target, "options", opts)
	return &csi.NodePublishVolumeResponse{}, nil
}

// NodeUnpublishVolume unmounts the target and removes it.
func (n *NodeServer) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	if err := required("volume_id", req.GetVolumeId(), "target_path", req.GetTargetPath()); err != nil {
		return nil, err
	}
	target := req.GetTargetPath()
	what := "unpublish volume " + req.GetVolumeId()
	id, idErr := parseVolumeID(req.GetVolumeId())
	if idErr == nil {
		release, err := n.locks.acquire(id.String())
		if err != nil {
			return nil, toStatus(err, what)
		}
		defer release()
	}
	if _, err := os.Lstat(target); err == nil {
		mounted, err := n.mnt.IsMountPoint(target)
		if err != nil && !isNotExist(err) {
			return nil, toStatus(err, what)
		}
		if mounted {
			if err := n.mnt.Unmount(target); err != nil {
				return nil, toStatus(fmt.Errorf("unmount %s: %w", target, err), what)
			}
		}
		if err := os.Remove(target); err != nil && !isNotExist(err) {
			return nil, toStatus(err, what)
		}
	} else if !isNotExist(err) {
		return nil, toStatus(err, what)
	}
	if idErr == nil {
		if st, ok, err := n.loadState(id); err == nil && ok && st.hasTarget(target) {
			st.removeTarget(target)
			if err := n.saveState(id, st); err != nil {
				return nil, toStatus(err, what)
			}
		}
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// stagedAt returns the state of a volume staged here whose staging or
// target path is path.
func (n *NodeServer) stagedAt(idStr, path string) (volumeID, *volState, error) {
	id, err := parseVolumeID(idStr)
	if err != nil {
		return id, nil, status.Errorf(codes.NotFound, "%v", err)
	}
	st, ok, err := n.loadState(id)
	if err != nil {
		return id, nil, err
	}
	if !ok {
		return id, nil, fmt.Errorf("volume %s: %w", id, errNotStaged)
	}
	if path != "" && path != st.StagingPath && !st.hasTarget(path) {
		return id, nil, status.Errorf(codes.NotFound, "volume %s is not staged or published at %s", id, path)
	}
	return id, st, nil
}

// NodeGetVolumeStats reports bytes and inodes of a filesystem volume, or
// the size of a block volume.
func (n *NodeServer) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	if err := required("volume_id", req.GetVolumeId(), "volume_path", req.GetVolumePath()); err != nil {
		return nil, err
	}
	path := req.GetVolumePath()
	id, st, err := n.stagedAt(req.GetVolumeId(), path)
	if err != nil {
		return nil, toStatus(err, "volume stats "+req.GetVolumeId())
	}
	if _, err := os.Stat(path); err != nil {
		return nil, status.Errorf(codes.NotFound, "volume %s: %s: %v", id, path, err)
	}
	if st.Block || isBlockDevice(path) {
		size, err := n.mnt.DeviceSize(path)
		if err != nil {
			return nil, toStatus(err, "volume stats "+id.String())
		}
		return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{{Unit: csi.VolumeUsage_BYTES, Total: size}}}, nil
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return nil, toStatus(err, "volume stats "+id.String())
	}
	bs := int64(fs.Bsize)
	return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{
		{Unit: csi.VolumeUsage_BYTES, Total: int64(fs.Blocks) * bs, Available: int64(fs.Bavail) * bs, Used: int64(fs.Blocks-fs.Bfree) * bs},
		{Unit: csi.VolumeUsage_INODES, Total: int64(fs.Files), Available: int64(fs.Ffree), Used: int64(fs.Files - fs.Ffree)},
	}}, nil
}

// NodeExpandVolume makes the device show the volume's new size (the
// controller grew the volume; nbdkit serves it) and grows the filesystem.
func (n *NodeServer) NodeExpandVolume(ctx context.Context, req *csi.NodeExpandVolumeRequest) (*csi.NodeExpandVolumeResponse, error) {
	if err := required("volume_id", req.GetVolumeId(), "volume_path", req.GetVolumePath()); err != nil {
		return nil, err
	}
	if vc := req.GetVolumeCapability(); vc != nil {
		if _, err := checkCapability(vc); err != nil {
			return nil, invalidArg("%v", err)
		}
	}
	id, err := parseVolumeID(req.GetVolumeId())
	if err != nil {
		return nil, status.Errorf(codes.NotFound, "%v", err)
	}
	what := "expand volume " + id.String()
	release, err := n.locks.acquire(id.String())
	if err != nil {
		return nil, toStatus(err, what)
	}
	defer release()
	_, st, err := n.stagedAt(req.GetVolumeId(), req.GetVolumePath())
	if err != nil {
		return nil, toStatus(err, what)
	}
	// The store says how large the volume is now (the controller grew it,
	// and the volume's engine in nbdkit grew with it).
	url, err := n.volumeURL(id, st)
	if err != nil {
		return nil, toStatus(err, what)
	}
	store, err := n.volumeStore(ctx, url)
	if err != nil {
		return nil, toStatus(err, what)
	}
	inf, err := vb.Inspect(ctx, store, id.Vol)
	if err != nil {
		return nil, toStatus(err, what)
	}
	if inf.Size > st.Size {
		st.Size = inf.Size
	}
	dev, err := n.att.Resize(ctx, n.export(id, st))
	if err != nil {
		return nil, toStatus(fmt.Errorf("resize device: %w", err), what)
	}
	if dev.Path != "" {
		st.Device = dev.Path
	}
	if err := n.saveState(id, st); err != nil {
		return nil, toStatus(err, what)
	}
	if want := req.GetCapacityRange().GetRequiredBytes(); want > 0 && dev.Size < want {
		return nil, status.Errorf(codes.Unavailable, "volume %s: the device shows %d bytes, less than %d: the volume has not grown yet (is ControllerExpandVolume done?)", id, dev.Size, want)
	}
	if !st.Block && !st.ReadOnly {
		if err := n.mnt.ResizeFS(st.Device, st.StagingPath); err != nil {
			return nil, toStatus(fmt.Errorf("grow filesystem: %w", err), what)
		}
	}
	klog.InfoS("expanded volume on node", "volume", id, "size", dev.Size)
	return &csi.NodeExpandVolumeResponse{CapacityBytes: dev.Size}, nil
}
