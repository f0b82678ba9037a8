package driver

import (
	"context"
	"errors"
	"fmt"
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

// DeleteVolume deletes a volume. A volume that does not exist (or whose ID
// this driver could never have made) is deleted already. Snapshots and
// clones keep the data they share.
func (c *ControllerServer) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	op, noop, err := volumeCall{verb: "delete volume", volumeID: req.GetVolumeId(), malformed: malformedNoop, locks: &c.locks}.begin()
	if err != nil {
		return nil, err
	}
	if noop {
		klog.InfoS("delete of a malformed volume ID: nothing to do", "volumeID", req.GetVolumeId())
		return &csi.DeleteVolumeResponse{}, nil
	}
	defer op.end()
	id := op.id
	if _, err := c.stores.url(id.Store); err != nil {
		klog.InfoS("delete of a volume in an unknown store: nothing to do", "volume", id)
		return &csi.DeleteVolumeResponse{}, nil
	}
	st, err := c.store(ctx, id.Store, req.GetSecrets())
	if err != nil {
		return nil, op.fail(err)
	}
	key, err := encryptionKey(req.GetSecrets())
	if err != nil {
		return nil, op.fail(err)
	}
	var rec publishRecord
	if _, ok, err := getRecord(ctx, st, publishKey(id.Vol), &rec); err != nil {
		return nil, op.fail(err)
	} else if ok {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is published to node %s; unpublish it first", id, strings.Join(rec.nodes(), " and "))
	}
	err = vb.Delete(ctx, st, id.Vol)
	if errors.Is(err, vb.ErrInUse) {
		// Either the manifest changed under us (another controller
		// replica deleting the volume too, during a sidecar's hand-over:
		// the volume is a tombstone now, which the second Delete finishes
		// or finds gone), or it is open for writing on some node but
		// published nowhere: the node died (or was force-detached) without
		// closing it. Then take ownership (fencing the old owner) and
		// close at once, and delete.
		if inf, ierr := vb.Stat(ctx, st, id.Vol); ierr == nil && inf.Open {
			klog.InfoS("volume is still marked open but is published nowhere: fencing the old owner before deleting", "volume", id)
			if ferr := c.fence(ctx, st, id, key); ferr != nil && !errors.Is(ferr, vb.ErrNotFound) {
				return nil, op.fail(fmt.Errorf("%w (and fencing the old owner failed: %v)", err, ferr))
			}
		}
		err = vb.Delete(ctx, st, id.Vol)
	}
	if errors.Is(err, vb.ErrNotFound) {
		return &csi.DeleteVolumeResponse{}, nil
	}
	if err != nil {
		return nil, op.fail(err)
	}
	klog.InfoS("deleted volume", "volume", id)
	return &csi.DeleteVolumeResponse{}, nil
}

// fence takes ownership of a volume with a throw-away WAL and closes it, so
// the backend no longer counts it as open and a stale owner is fenced.
func (c *ControllerServer) fence(ctx context.Context, st backend.Store, id volumeID, key *volumeKey) error {
	dir, err := os.MkdirTemp(c.tmpDir, "fence-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	v, err := vb.Open(ctx, st, id.Vol, vb.Options{WALDir: dir, CacheBlocks: -1, Keys: key.keys()})
	if err != nil {
		return err
	}
	return v.Close()
}

// ValidateVolumeCapabilities confirms the capabilities this driver
// supports for an existing volume.
func (c *ControllerServer) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if len(req.GetVolumeCapabilities()) == 0 && req.GetVolumeId() != "" {
		return nil, invalidArg("volume_capabilities are required")
	}
	op, _, err := volumeCall{verb: "validate volume", volumeID: req.GetVolumeId()}.begin()
	if err != nil {
		return nil, err
	}
	id := op.id
	st, err := c.store(ctx, id.Store, req.GetSecrets())
	if err != nil {
		return nil, op.fail(err)
	}
	if _, err := vb.Stat(ctx, st, id.Vol); err != nil {
		return nil, op.fail(err)
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
	limit := int(req.GetMaxEntries())
	var entries []*csi.ListVolumesResponse_Entry
	for _, name := range c.stores.names() {
		from, skip := tokenIn(name+"/", after)
		if skip {
			continue
		}
		st, err := c.store(ctx, name, nil)
		if err != nil {
			return nil, toStatus(err, "list volumes in store "+name)
		}
		// At most one page (and one more, to know whether another page
		// follows) from each store: the page is cut after merging them.
		fetch := 0
		if limit > 0 {
			fetch = limit + 1
		}
		vols, err := vb.ListVolumesFrom(ctx, st, from, fetch)
		if err != nil {
			return nil, toStatus(err, "list volumes in store "+name)
		}
		pub, err := publishedNodes(ctx, st)
		if err != nil {
			return nil, toStatus(err, "list publications in store "+name)
		}
		for _, v := range vols {
			id := volumeID{Store: name, Vol: v.Name}
			if id.String() <= after || validObjectName(v.Name) != nil {
				continue
			}
			vol := &csi.Volume{VolumeId: id.String(), VolumeContext: map[string]string{ParamStore: name}}
			if v.Err != nil {
				// Listed with an unknown capacity (0): the volume exists
				// and ControllerGetVolumeHealth reports what is wrong.
				klog.ErrorS(v.Err, "cannot read a volume's manifest; listing it with an unknown capacity", "volume", id)
			} else {
				vol.CapacityBytes, vol.ContentSource = v.Info.Size, contentSource(name, v.Info.Parent)
			}
			e := &csi.ListVolumesResponse_Entry{Volume: vol, Status: &csi.ListVolumesResponse_VolumeStatus{}}
			if n, ok := pub[v.Name]; ok {
				e.Status.PublishedNodeIds = n
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

// ControllerGetVolume describes a volume and where it is published.
func (c *ControllerServer) ControllerGetVolume(ctx context.Context, req *csi.ControllerGetVolumeRequest) (*csi.ControllerGetVolumeResponse, error) {
	op, _, err := volumeCall{verb: "get volume", volumeID: req.GetVolumeId()}.begin()
	if err != nil {
		return nil, err
	}
	id := op.id
	st, err := c.store(ctx, id.Store, nil)
	if err != nil {
		return nil, op.fail(err)
	}
	inf, err := vb.Stat(ctx, st, id.Vol)
	if err != nil {
		return nil, op.fail(err)
	}
	var rec publishRecord
	_, found, err := getRecord(ctx, st, publishKey(id.Vol), &rec)
	if err != nil {
		return nil, op.fail(err)
	}
	vs := &csi.ControllerGetVolumeResponse_VolumeStatus{}
	if found {
		vs.PublishedNodeIds = rec.nodes()
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
	op, _, err := volumeCall{verb: "volume health", volumeID: req.GetVolumeId()}.begin()
	if err != nil {
		return nil, err
	}
	id := op.id
	h := &csi.VolumeHealth{VolumeId: req.GetVolumeId()}
	add := func(t csi.VolumeHealthErrorType, reason, msg string) {
		h.HealthStatuses = append(h.HealthStatuses, &csi.VolumeHealth_VolumeHealthEntry{Status: t, Reason: reason, Message: msg})
	}
	st, err := c.store(ctx, id.Store, req.GetSecrets())
	if errors.Is(err, backend.ErrNotFound) {
		return nil, op.fail(err)
	}
	if err != nil {
		add(csi.VolumeHealthErrorType_INACCESSIBLE, "StoreUnavailable", err.Error())
		return &csi.ControllerGetVolumeHealthResponse{VolumeHealth: h}, nil
	}
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	inf, err := vb.Stat(hctx, st, id.Vol)
	switch {
	case errors.Is(err, vb.ErrNotFound):
		return nil, op.fail(err)
	case errors.Is(err, vb.ErrCorrupt), errors.Is(err, vb.ErrBackendState):
		add(csi.VolumeHealthErrorType_DATA_LOSS, "MetadataCorrupt", err.Error())
	case err != nil:
		c.metrics.StoreErrors.WithLabelValues(id.Store).Inc()
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

// tokenIn places a listing token among the names under prefix (a store's
// "<store>/"): from is the name after which the names of that prefix that
// sort after the token begin, and skip is true when none does. Names are
// [A-Za-z0-9._-], all below '~', so every ID under prefix sorts below
// prefix+"~".
func tokenIn(prefix, token string) (from string, skip bool) {
	if rest, ok := strings.CutPrefix(token, prefix); ok {
		return rest, false
	}
	if token < prefix {
		return "", false
	}
	return "", token >= prefix+"~"
}

func wrapInt64(v int64) *wrapperspb.Int64Value { return wrapperspb.Int64(v) }
