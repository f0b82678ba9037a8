package driver

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/url"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"k8s.io/klog/v2"

	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

// maxVolumeSize is the engine's limit.
const maxVolumeSize = 1 << 50

// NodeChecker tells ControllerPublishVolume whether a node exists. st is
// the volume's store (the store checker looks for the node's record there).
type NodeChecker interface {
	NodeExists(ctx context.Context, node string, st backend.Store) (bool, error)
}

// StoreNodeChecker finds nodes by the records node plugins write into each
// store at start-up (csi.meta/nodes/<node>).
type StoreNodeChecker struct{}

// NodeExists reports whether node registered in st.
func (StoreNodeChecker) NodeExists(ctx context.Context, node string, st backend.Store) (bool, error) {
	var rec nodeRecord
	_, ok, err := getRecord(ctx, st, nodeKey(node), &rec)
	return ok, err
}

// AnyNodeChecker accepts every node ID.
type AnyNodeChecker struct{}

// NodeExists always reports true.
func (AnyNodeChecker) NodeExists(context.Context, string, backend.Store) (bool, error) {
	return true, nil
}

// ControllerServer is the CSI Controller service. It keeps no state: the
// stores are the source of truth for volumes, snapshots and publications.
type ControllerServer struct {
	csi.UnimplementedControllerServer
	opts    *Options
	stores  *storeSet
	nodes   NodeChecker
	metrics *Metrics
	locks   inflight // per volume ID and per snapshot name
	tmpDir  string   // private scratch space (credential files, fencing WALs)
}

// NewControllerServer builds the controller. open may be nil (backend.Open).
func NewControllerServer(opts *Options, nodes NodeChecker, open storeOpener) (*ControllerServer, error) {
	if err := opts.ValidateController(); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "viperblock-controller-")
	if err != nil {
		return nil, err
	}
	credDir := opts.CredentialsDir
	if credDir == "" {
		credDir = tmp
	} else if err := os.MkdirAll(credDir, 0o700); err != nil {
		return nil, err
	}
	if nodes == nil {
		nodes = StoreNodeChecker{}
	}
	return &ControllerServer{opts: opts, stores: newStoreSet(opts, credDir, open), nodes: nodes, metrics: DefaultMetrics(), tmpDir: tmp}, nil
}

// Close releases the stores and scratch space.
func (c *ControllerServer) Close() {
	c.stores.close()
	os.RemoveAll(c.tmpDir)
}

// ControllerGetCapabilities lists exactly what works.
func (c *ControllerServer) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	var caps []*csi.ControllerServiceCapability
	for _, t := range []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
		csi.ControllerServiceCapability_RPC_EXPAND_VOLUME,
		csi.ControllerServiceCapability_RPC_LIST_VOLUMES,
		csi.ControllerServiceCapability_RPC_LIST_VOLUMES_PUBLISHED_NODES,
		csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
		csi.ControllerServiceCapability_RPC_GET_CAPACITY,
		csi.ControllerServiceCapability_RPC_PUBLISH_UNPUBLISH_VOLUME,
		csi.ControllerServiceCapability_RPC_GET_VOLUME,
		csi.ControllerServiceCapability_RPC_GET_VOLUME_HEALTH,
		csi.ControllerServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
	} {
		caps = append(caps, &csi.ControllerServiceCapability{
			Type: &csi.ControllerServiceCapability_Rpc{Rpc: &csi.ControllerServiceCapability_RPC{Type: t}},
		})
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

// store opens a store, counting failures.
func (c *ControllerServer) store(ctx context.Context, name string, secrets map[string]string) (backend.Store, error) {
	st, err := c.stores.get(ctx, name, secrets)
	if err != nil && !errors.Is(err, backend.ErrNotFound) {
		c.metrics.BackendErrors.WithLabelValues(name).Inc()
	}
	return st, err
}

// requestedSize turns a capacity range into a size in whole 4 KiB blocks.
func requestedSize(r *csi.CapacityRange, def int64) (int64, error) {
	req, lim := r.GetRequiredBytes(), r.GetLimitBytes()
	if req < 0 || lim < 0 {
		return 0, status.Error(codes.InvalidArgument, "capacity range must not be negative")
	}
	if lim > 0 && req > lim {
		return 0, status.Errorf(codes.InvalidArgument, "required_bytes %d exceeds limit_bytes %d", req, lim)
	}
	size := req
	if size == 0 {
		size = def
		if lim > 0 && size > lim {
			size = lim
		}
	}
	if size > math.MaxInt64-(vb.BlockSize-1) { // roundUp would overflow
		return 0, status.Errorf(codes.OutOfRange, "%d bytes exceeds the largest volume, 1 PiB", size)
	}
	size = roundUp(size)
	if lim > 0 && size > lim {
		size = lim / vb.BlockSize * vb.BlockSize
		if size < req || size == 0 {
			return 0, status.Errorf(codes.OutOfRange, "no whole number of 4 KiB blocks fits in [%d, %d] bytes", req, lim)
		}
	}
	if size > maxVolumeSize {
		return 0, status.Errorf(codes.OutOfRange, "%d bytes exceeds the largest volume, 1 PiB", size)
	}
	return size, nil
}

func roundUp(n int64) int64 { return (n + vb.BlockSize - 1) / vb.BlockSize * vb.BlockSize }

// fits reports whether size satisfies a capacity range.
func fits(size int64, r *csi.CapacityRange) bool {
	return size >= r.GetRequiredBytes() && (r.GetLimitBytes() == 0 || size <= r.GetLimitBytes())
}

// CreateVolume creates a volume, blank or as a copy-on-write clone of a
// snapshot or another volume. The volume name is derived from the CSI name,
// so a retry finds the volume it created and returns it.
func (c *ControllerServer) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	if req.GetName() == "" {
		return nil, invalidArg("name is required")
	}
	if err := checkCapabilities(req.GetVolumeCapabilities()); err != nil {
		return nil, invalidArg("%v", err)
	}
	vp, err := parseVolumeParams(req.GetParameters(), c.opts.DefaultStore)
	if err != nil {
		return nil, invalidArg("%v", err)
	}
	if len(req.GetMutableParameters()) > 0 {
		return nil, invalidArg("mutable parameters are not supported")
	}
	if vp.FsType == "" {
		// The filesystem comes from the capability: the options must suit it.
		for _, vc := range req.GetVolumeCapabilities() {
			if fs := vc.GetMount().GetFsType(); fs != "" {
				if err := checkMkfsOptions(fs, vp.MkfsOptions); err != nil {
					return nil, invalidArg("%v", err)
				}
			}
		}
	}
	if _, err := c.stores.url(vp.Store); err != nil {
		return nil, invalidArg("parameter %s: %v", ParamStore, err)
	}
	size, err := requestedSize(req.GetCapacityRange(), c.opts.DefaultVolumeSize)
	if err != nil {
		return nil, err
	}
	id := volumeID{Store: vp.Store, Vol: volumeNameFor(req.GetName())}
	release, err := c.locks.acquire(id.String())
	if err != nil {
		return nil, toStatus(err, "create volume "+id.String())
	}
	defer release()
	st, err := c.store(ctx, vp.Store, req.GetSecrets())
	if err != nil {
		return nil, toStatus(err, "create volume "+id.String())
	}

	// What the volume's parent must be, and the smallest size it can have.
	src := req.GetVolumeContentSource()
	var parent, parentPrefix string
	var srcSnap snapshotID
	var srcVol volumeID
	switch {
	case src == nil:
	case src.GetSnapshot() != nil:
		srcSnap, err = parseSnapshotID(src.GetSnapshot().GetSnapshotId())
		if err != nil {
			return nil, status.Errorf(codes.NotFound, "source snapshot: %v", err)
		}
		if srcSnap.Store != id.Store {
			return nil, invalidArg("source snapshot %s is in store %q, the new volume in %q: clones stay in their store", srcSnap, srcSnap.Store, id.Store)
		}
		parent = srcSnap.Vol + "@" + srcSnap.Snap
	case src.GetVolume() != nil:
		srcVol, err = parseVolumeID(src.GetVolume().GetVolumeId())
		if err != nil {
			return nil, status.Errorf(codes.NotFound, "source volume: %v", err)
		}
		if srcVol.Store != id.Store {
			return nil, invalidArg("source volume %s is in store %q, the new volume in %q: clones stay in their store", srcVol, srcVol.Store, id.Store)
		}
		if srcVol.Vol == id.Vol {
			return nil, invalidArg("a volume cannot be cloned from itself")
		}
		parentPrefix = srcVol.Vol + "@"
	default:
		return nil, invalidArg("unsupported volume content source")
	}

	resp := func(size int64) *csi.CreateVolumeResponse {
		return &csi.CreateVolumeResponse{Volume: &csi.Volume{
			VolumeId: id.String(), CapacityBytes: size, VolumeContext: vp.context(), ContentSource: src,
		}}
	}
	// An existing volume is this request's if it has the same source and
	// a size within the range.
	checkExisting := func() (*csi.CreateVolumeResponse, bool, error) {
		inf, err := vb.Inspect(ctx, st, id.Vol)
		if errors.Is(err, vb.ErrNotFound) {
			return nil, false, nil
		}
		if err != nil {
			return nil, false, toStatus(err, "create volume "+id.String())
		}
		sameSource := inf.Parent == parent
		if parentPrefix != "" {
			sameSource = strings.HasPrefix(inf.Parent, parentPrefix)
		}
		if !sameSource {
			return nil, false, status.Errorf(codes.AlreadyExists, "volume %s exists with another content source (parent %q)", id, inf.Parent)
		}
		if !fits(inf.Size, req.GetCapacityRange()) {
			return nil, false, status.Errorf(codes.AlreadyExists, "volume %s exists with %d bytes, outside the requested range", id, inf.Size)
		}
		return resp(inf.Size), true, nil
	}
	if r, ok, err := checkExisting(); err != nil || ok {
		return r, err
	}

	switch {
	case src == nil:
		err = vb.CreateWithClass(ctx, st, id.Vol, size, vb.Durability(vp.Durability))
	case src.GetSnapshot() != nil:
		var si vb.SnapshotInfo
		si, err = vb.InspectSnapshot(ctx, st, srcSnap.Vol, srcSnap.Snap)
		if err != nil {
			return nil, toStatus(err, "source snapshot "+srcSnap.String())
		}
		if size, err = cloneSize(size, si.Size, req.GetCapacityRange()); err != nil {
			return nil, err
		}
		err = vb.Clone(ctx, st, srcSnap.Vol, srcSnap.Snap, id.Vol, size)
	default:
		var inf vb.Info
		inf, err = vb.Inspect(ctx, st, srcVol.Vol)
		if err != nil {
			return nil, toStatus(err, "source volume "+srcVol.String())
		}
		if size, err = cloneSize(size, inf.Size, req.GetCapacityRange()); err != nil {
			return nil, err
		}
		err = vb.CloneVolume(ctx, st, srcVol.Vol, id.Vol, size, vb.SnapshotOptions{OwnerWait: c.opts.OwnerWait, Logf: logf})
	}
	if errors.Is(err, vb.ErrExists) {
		// Created meanwhile by someone else (another controller, vblock).
		if r, ok, err := checkExisting(); err != nil || ok {
			return r, err
		}
	}
	if err != nil {
		return nil, toStatus(err, "create volume "+id.String())
	}
	klog.InfoS("created volume", "volume", id, "size", size, "parent", parent+parentPrefix)
	return resp(size), nil
}

// cloneSize is the size of a clone: at least the source's.
func cloneSize(size, srcSize int64, r *csi.CapacityRange) (int64, error) {
	if size >= srcSize {
		return size, nil
	}
	if r.GetLimitBytes() > 0 && srcSize > r.GetLimitBytes() {
		return 0, status.Errorf(codes.OutOfRange, "the source holds %d bytes, more than limit_bytes %d", srcSize, r.GetLimitBytes())
	}
	return srcSize, nil
}

func logf(format string, args ...any) { klog.InfoS(fmt.Sprintf(format, args...)) }

// DeleteVolume deletes a volume. A volume that does not exist (or whose ID
// this driver could never have made) is deleted already. Snapshots and
// clones keep the data they share.
func (c *ControllerServer) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, invalidArg("volume_id is required")
	}
	id, err := parseVolumeID(req.GetVolumeId())
	if err != nil {
		klog.InfoS("delete of a malformed volume ID: nothing to do", "volumeID", req.GetVolumeId(), "reason", err)
		return &csi.DeleteVolumeResponse{}, nil
	}
	if _, err := c.stores.url(id.Store); err != nil {
		klog.InfoS("delete of a volume in an unknown store: nothing to do", "volume", id)
		return &csi.DeleteVolumeResponse{}, nil
	}
	release, err := c.locks.acquire(id.String())
	if err != nil {
		return nil, toStatus(err, "delete volume "+id.String())
	}
	defer release()
	st, err := c.store(ctx, id.Store, req.GetSecrets())
	if err != nil {
		return nil, toStatus(err, "delete volume "+id.String())
	}
	var rec publishRecord
	if _, ok, err := getRecord(ctx, st, publishKey(id.Vol), &rec); err != nil {
		return nil, toStatus(err, "delete volume "+id.String())
	} else if ok {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is published to node %s; unpublish it first", id, rec.Node)
	}
	err = vb.Delete(ctx, st, id.Vol)
	if errors.Is(err, vb.ErrInUse) {
		// Open for writing on some node, but published nowhere: the node
		// died (or was force-detached) without closing it. Take ownership
		// (fencing the old owner) and close at once, then delete.
		klog.InfoS("volume is still marked open but is published nowhere: fencing the old owner before deleting", "volume", id)
		if ferr := c.fence(ctx, st, id); ferr != nil {
			return nil, toStatus(fmt.Errorf("%w (and fencing the old owner failed: %v)", err, ferr), "delete volume "+id.String())
		}
		err = vb.Delete(ctx, st, id.Vol)
	}
	if errors.Is(err, vb.ErrNotFound) {
		return &csi.DeleteVolumeResponse{}, nil
	}
	if err != nil {
		return nil, toStatus(err, "delete volume "+id.String())
	}
	klog.InfoS("deleted volume", "volume", id)
	return &csi.DeleteVolumeResponse{}, nil
}

// fence takes ownership of a volume with a throw-away WAL and closes it, so
// the backend no longer counts it as open and a stale owner is fenced.
func (c *ControllerServer) fence(ctx context.Context, st backend.Store, id volumeID) error {
	dir, err := os.MkdirTemp(c.tmpDir, "fence-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	v, err := vb.Open(ctx, st, id.Vol, vb.Options{WALDir: dir, CacheBlocks: -1})
	if err != nil {
		return err
	}
	return v.Close()
}

// ControllerPublishVolume records that a volume is published to a node.
// A volume is published to one node at a time (single-node access modes);
// the node that opens it takes ownership in the store, which fences any
// node that still had it.
func (c *ControllerServer) ControllerPublishVolume(ctx context.Context, req *csi.ControllerPublishVolumeRequest) (*csi.ControllerPublishVolumeResponse, error) {
	if err := required("volume_id", req.GetVolumeId(), "node_id", req.GetNodeId()); err != nil {
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
	if err := validNodeID(req.GetNodeId()); err != nil {
		return nil, status.Errorf(codes.NotFound, "%v", err)
	}
	release, err := c.locks.acquire(id.String())
	if err != nil {
		return nil, toStatus(err, "publish volume "+id.String())
	}
	defer release()
	st, err := c.store(ctx, id.Store, req.GetSecrets())
	if err != nil {
		return nil, toStatus(err, "publish volume "+id.String())
	}
	if _, err := vb.Inspect(ctx, st, id.Vol); err != nil {
		return nil, toStatus(err, "publish volume "+id.String())
	}
	ok, err := c.nodes.NodeExists(ctx, req.GetNodeId(), st)
	if err != nil {
		return nil, toStatus(err, "publish volume "+id.String())
	}
	if !ok {
		return nil, status.Errorf(codes.NotFound, "node %s is not known to this driver", req.GetNodeId())
	}
	want := publishRecord{Node: req.GetNodeId(), ReadOnly: req.GetReadonly() || acc.readOnly(), Mode: acc.Mode.String(), Block: acc.Block, Time: time.Now().UTC()}
	pctx := map[string]string{"node": req.GetNodeId()}
	for attempt := 0; attempt < 5; attempt++ {
		var rec publishRecord
		ver, found, err := getRecord(ctx, st, publishKey(id.Vol), &rec)
		if err != nil {
			return nil, toStatus(err, "publish volume "+id.String())
		}
		if found {
			if rec.Node != want.Node {
				return nil, status.Errorf(codes.FailedPrecondition, "volume %s is published to node %s; a volume is served by one node at a time", id, rec.Node)
			}
			if rec.ReadOnly != want.ReadOnly || rec.Block != want.Block {
				return nil, status.Errorf(codes.AlreadyExists, "volume %s is published to node %s with other options (readonly %v, block %v)", id, rec.Node, rec.ReadOnly, rec.Block)
			}
			return &csi.ControllerPublishVolumeResponse{PublishContext: pctx}, nil
		}
		ok, err := putRecord(ctx, st, publishKey(id.Vol), want, ver)
		if err != nil {
			return nil, toStatus(err, "publish volume "+id.String())
		}
		if ok {
			klog.InfoS("published volume", "volume", id, "node", want.Node, "readonly", want.ReadOnly)
			return &csi.ControllerPublishVolumeResponse{PublishContext: pctx}, nil
		}
	}
	return nil, status.Errorf(codes.Aborted, "volume %s: publication changed concurrently; retry", id)
}

// ControllerUnpublishVolume removes the publication record. Unpublishing
// what is not published (or from another node) succeeds.
func (c *ControllerServer) ControllerUnpublishVolume(ctx context.Context, req *csi.ControllerUnpublishVolumeRequest) (*csi.ControllerUnpublishVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, invalidArg("volume_id is required")
	}
	id, err := parseVolumeID(req.GetVolumeId())
	if err != nil {
		return &csi.ControllerUnpublishVolumeResponse{}, nil
	}
	if _, err := c.stores.url(id.Store); err != nil {
		return &csi.ControllerUnpublishVolumeResponse{}, nil
	}
	release, err := c.locks.acquire(id.String())
	if err != nil {
		return nil, toStatus(err, "unpublish volume "+id.String())
	}
	defer release()
	st, err := c.store(ctx, id.Store, req.GetSecrets())
	if err != nil {
		return nil, toStatus(err, "unpublish volume "+id.String())
	}
	var rec publishRecord
	_, found, err := getRecord(ctx, st, publishKey(id.Vol), &rec)
	if err != nil {
		return nil, toStatus(err, "unpublish volume "+id.String())
	}
	if !found || (req.GetNodeId() != "" && rec.Node != req.GetNodeId()) {
		return &csi.ControllerUnpublishVolumeResponse{}, nil
	}
	if err := st.Delete(ctx, publishKey(id.Vol)); err != nil {
		return nil, toStatus(err, "unpublish volume "+id.String())
	}
	klog.InfoS("unpublished volume", "volume", id, "node", rec.Node)
	return &csi.ControllerUnpublishVolumeResponse{}, nil
}

// ValidateVolumeCapabilities confirms the capabilities this driver
// supports for an existing volume.
func (c *ControllerServer) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, invalidArg("volume_id is required")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, invalidArg("volume_capabilities are required")
	}
	id, err := parseVolumeID(req.GetVolumeId())
	if err != nil {
		return nil, status.Errorf(codes.NotFound, "%v", err)
	}
	st, err := c.store(ctx, id.Store, req.GetSecrets())
	if err != nil {
		return nil, toStatus(err, "validate volume "+id.String())
	}
	if _, err := vb.Inspect(ctx, st, id.Vol); err != nil {
		return nil, toStatus(err, "validate volume "+id.String())
	}
	if err := checkCapabilities(req.GetVolumeCapabilities()); err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: err.Error()}, nil
	}
	if _, err := parseVolumeParams(req.GetParameters(), id.Store); err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: err.Error()}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext: req.GetVolumeContext(), VolumeCapabilities: req.GetVolumeCapabilities(), Parameters: req.GetParameters(),
	}}, nil
}

// contentSource reconstructs where a clone came from, from its parent.
func contentSource(store, parent string) *csi.VolumeContentSource {
	vol, snap, ok := strings.Cut(parent, "@")
	if !ok {
		return nil
	}
	if strings.HasPrefix(snap, "clone-") {
		return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{
			VolumeId: volumeID{Store: store, Vol: vol}.String(),
		}}}
	}
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{
		SnapshotId: snapshotID{Store: store, Vol: vol, Snap: snap}.String(),
	}}}
}

// ListVolumes lists the volumes of every store, ordered by volume ID. The
// token is the last ID of the previous page, so volumes created or deleted
// between pages neither repeat nor shift the list.
func (c *ControllerServer) ListVolumes(ctx context.Context, req *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	if req.GetMaxEntries() < 0 {
		return nil, invalidArg("max_entries must not be negative")
	}
	after := req.GetStartingToken()
	if after != "" {
		if _, err := parseVolumeID(after); err != nil {
			return nil, status.Errorf(codes.Aborted, "starting_token %q is not a token this driver issued", after)
		}
	}
	var entries []*csi.ListVolumesResponse_Entry
	for _, name := range c.stores.names() {
		if after != "" && name < strings.SplitN(after, "/", 2)[0] {
			continue
		}
		st, err := c.store(ctx, name, nil)
		if err != nil {
			return nil, toStatus(err, "list volumes in store "+name)
		}
		vols, err := vb.List(ctx, st)
		if err != nil {
			return nil, toStatus(err, "list volumes in store "+name)
		}
		pub, err := publishedNodes(ctx, st)
		if err != nil {
			return nil, toStatus(err, "list publications in store "+name)
		}
		sort.Strings(vols)
		for _, v := range vols {
			id := volumeID{Store: name, Vol: v}
			if id.String() <= after || validObjectName(v) != nil {
				continue
			}
			inf, err := vb.Inspect(ctx, st, v)
			if errors.Is(err, vb.ErrNotFound) {
				continue // deleted meanwhile
			}
			if err != nil {
				return nil, toStatus(err, "inspect volume "+id.String())
			}
			e := &csi.ListVolumesResponse_Entry{
				Volume: &csi.Volume{VolumeId: id.String(), CapacityBytes: inf.Size, ContentSource: contentSource(name, inf.Parent),
					VolumeContext: map[string]string{ParamStore: name}},
				Status: &csi.ListVolumesResponse_VolumeStatus{},
			}
			if n, ok := pub[v]; ok {
				e.Status.PublishedNodeIds = []string{n}
			}
			entries = append(entries, e)
		}
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Volume.VolumeId < entries[j].Volume.VolumeId })
	resp := &csi.ListVolumesResponse{Entries: entries}
	if n := int(req.GetMaxEntries()); n > 0 && len(entries) > n {
		resp.Entries = entries[:n]
		resp.NextToken = entries[n-1].Volume.VolumeId
	}
	return resp, nil
}

// GetCapacity reports free space: the filesystem's for a file store; for
// object stores without a limit (S3), the largest volume size.
func (c *ControllerServer) GetCapacity(ctx context.Context, req *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	for _, vc := range req.GetVolumeCapabilities() {
		if _, err := checkCapability(vc); err != nil {
			return &csi.GetCapacityResponse{AvailableCapacity: 0}, nil
		}
	}
	vp, err := parseVolumeParams(req.GetParameters(), c.opts.DefaultStore)
	if err != nil {
		return nil, invalidArg("%v", err)
	}
	raw, err := c.stores.url(vp.Store)
	if err != nil {
		return nil, invalidArg("parameter %s: %v", ParamStore, err)
	}
	resp := &csi.GetCapacityResponse{
		AvailableCapacity: maxVolumeSize,
		MaximumVolumeSize: wrapInt64(maxVolumeSize),
		MinimumVolumeSize: wrapInt64(vb.BlockSize),
	}
	if u, err := url.Parse(raw); err == nil && u.Scheme == "file" {
		var fs unix.Statfs_t
		if err := unix.Statfs(u.Path, &fs); err != nil {
			return nil, toStatus(fmt.Errorf("%w: statfs %s: %v", errUnavailable, u.Path, err), "get capacity")
		}
		resp.AvailableCapacity = int64(fs.Bavail) * fs.Bsize
	}
	return resp, nil
}

// ControllerExpandVolume grows a volume. If a node has it open, that
// node's engine is asked to grow it (and the call waits for the answer up
// to --owner-wait); otherwise the store is updated directly. The node then
// resizes the device and the filesystem (NodeExpandVolume).
func (c *ControllerServer) ControllerExpandVolume(ctx context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, invalidArg("volume_id is required")
	}
	if req.GetCapacityRange() == nil {
		return nil, invalidArg("capacity_range is required")
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
	size, err := requestedSize(req.GetCapacityRange(), 0)
	if err != nil {
		return nil, err
	}
	release, err := c.locks.acquire(id.String())
	if err != nil {
		return nil, toStatus(err, "expand volume "+id.String())
	}
	defer release()
	st, err := c.store(ctx, id.Store, req.GetSecrets())
	if err != nil {
		return nil, toStatus(err, "expand volume "+id.String())
	}
	inf, err := vb.Inspect(ctx, st, id.Vol)
	if err != nil {
		return nil, toStatus(err, "expand volume "+id.String())
	}
	newSize := inf.Size
	if inf.Size < size {
		newSize, err = vb.Expand(ctx, st, id.Vol, size, c.opts.OwnerWait)
		if errors.Is(err, vb.ErrInUse) {
			// The owning node did not answer in time; the request stays
			// and the next call sees the result.
			return nil, status.Errorf(codes.Unavailable, "expand volume %s: %v", id, err)
		}
		if err != nil {
			return nil, toStatus(err, "expand volume "+id.String())
		}
		klog.InfoS("expanded volume", "volume", id, "from", inf.Size, "to", newSize, "open", inf.Open)
	}
	if lim := req.GetCapacityRange().GetLimitBytes(); lim > 0 && newSize > lim {
		return nil, status.Errorf(codes.OutOfRange, "volume %s already holds %d bytes, more than limit_bytes %d", id, newSize, lim)
	}
	return &csi.ControllerExpandVolumeResponse{CapacityBytes: newSize, NodeExpansionRequired: true}, nil
}

// ControllerGetVolume describes a volume and where it is published.
func (c *ControllerServer) ControllerGetVolume(ctx context.Context, req *csi.ControllerGetVolumeRequest) (*csi.ControllerGetVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, invalidArg("volume_id is required")
	}
	id, err := parseVolumeID(req.GetVolumeId())
	if err != nil {
		return nil, status.Errorf(codes.NotFound, "%v", err)
	}
	st, err := c.store(ctx, id.Store, nil)
	if err != nil {
		return nil, toStatus(err, "get volume "+id.String())
	}
	inf, err := vb.Inspect(ctx, st, id.Vol)
	if err != nil {
		return nil, toStatus(err, "get volume "+id.String())
	}
	var rec publishRecord
	_, found, err := getRecord(ctx, st, publishKey(id.Vol), &rec)
	if err != nil {
		return nil, toStatus(err, "get volume "+id.String())
	}
	vs := &csi.ControllerGetVolumeResponse_VolumeStatus{}
	if found {
		vs.PublishedNodeIds = []string{rec.Node}
	}
	return &csi.ControllerGetVolumeResponse{
		Volume: &csi.Volume{VolumeId: id.String(), CapacityBytes: inf.Size, ContentSource: contentSource(id.Store, inf.Parent),
			VolumeContext: map[string]string{ParamStore: id.Store}},
		Status: vs,
	}, nil
}

// ControllerGetVolumeHealth reports the volume as the store sees it:
// unreadable metadata is DATA_LOSS, an unreachable store INACCESSIBLE, a
// volume open on a node it is not published to DEGRADED.
func (c *ControllerServer) ControllerGetVolumeHealth(ctx context.Context, req *csi.ControllerGetVolumeHealthRequest) (*csi.ControllerGetVolumeHealthResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, invalidArg("volume_id is required")
	}
	id, err := parseVolumeID(req.GetVolumeId())
	if err != nil {
		return nil, status.Errorf(codes.NotFound, "%v", err)
	}
	h := &csi.VolumeHealth{VolumeId: req.GetVolumeId()}
	add := func(t csi.VolumeHealthErrorType, reason, msg string) {
		h.HealthStatuses = append(h.HealthStatuses, &csi.VolumeHealth_VolumeHealthEntry{Status: t, Reason: reason, Message: msg})
	}
	st, err := c.store(ctx, id.Store, req.GetSecrets())
	if errors.Is(err, backend.ErrNotFound) {
		return nil, toStatus(err, "volume health "+id.String())
	}
	if err != nil {
		add(csi.VolumeHealthErrorType_INACCESSIBLE, "StoreUnavailable", err.Error())
		return &csi.ControllerGetVolumeHealthResponse{VolumeHealth: h}, nil
	}
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	inf, err := vb.Inspect(hctx, st, id.Vol)
	switch {
	case errors.Is(err, vb.ErrNotFound):
		return nil, toStatus(err, "volume health "+id.String())
	case errors.Is(err, vb.ErrCorrupt), errors.Is(err, vb.ErrBackendState):
		add(csi.VolumeHealthErrorType_DATA_LOSS, "MetadataCorrupt", err.Error())
	case err != nil:
		c.metrics.BackendErrors.WithLabelValues(id.Store).Inc()
		add(csi.VolumeHealthErrorType_INACCESSIBLE, "StoreUnavailable", err.Error())
	case inf.Open:
		var rec publishRecord
		if _, found, err := getRecord(hctx, st, publishKey(id.Vol), &rec); err == nil && !found {
			add(csi.VolumeHealthErrorType_DEGRADED, "OpenButNotPublished",
				fmt.Sprintf("the volume is open for writing (epoch %d) on a node it is not published to; that node may have died with unuploaded writes", inf.Epoch))
		}
	}
	return &csi.ControllerGetVolumeHealthResponse{VolumeHealth: h}, nil
}

func wrapInt64(v int64) *wrapperspb.Int64Value { return wrapperspb.Int64(v) }
