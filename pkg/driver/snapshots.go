package driver

import (
	"context"
	"errors"
	"sort"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	"k8s.io/klog/v2"

	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

func snapshotMessage(id snapshotID, si vb.SnapshotInfo) *csi.Snapshot {
	return &csi.Snapshot{
		SnapshotId: id.String(), SourceVolumeId: id.volume().String(), SizeBytes: si.Size,
		CreationTime: timestamppb.New(si.Created), ReadyToUse: true,
	}
}

// CreateSnapshot snapshots a volume: O(1), no data copied. If a node has
// the volume open, its engine drains first so the snapshot holds every
// write acknowledged before the call. CSI snapshot names are unique across
// volumes, so the name is claimed in the store (csi.meta/snapshots/<name>)
// before the snapshot is taken.
func (c *ControllerServer) CreateSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	if err := required("name", req.GetName(), "source_volume_id", req.GetSourceVolumeId()); err != nil {
		return nil, err
	}
	for k := range req.GetParameters() {
		if !strings.HasPrefix(k, k8sParamPrefix) {
			return nil, invalidArg("unknown snapshot parameter %q (none are supported)", k)
		}
	}
	vid, err := parseVolumeID(req.GetSourceVolumeId())
	if err != nil {
		return nil, status.Errorf(codes.NotFound, "source volume: %v", err)
	}
	if _, err := c.stores.url(vid.Store); err != nil {
		return nil, toStatus(err, "create snapshot")
	}
	id := snapshotID{Store: vid.Store, Vol: vid.Vol, Snap: snapshotNameFor(req.GetName())}
	what := "create snapshot " + id.String()
	release, err := c.locks.acquire("snapshot:" + id.Store + "/" + id.Snap)
	if err != nil {
		return nil, toStatus(err, what)
	}
	defer release()
	st, err := c.store(ctx, id.Store, req.GetSecrets())
	if err != nil {
		return nil, toStatus(err, what)
	}
	if _, err := vb.Stat(ctx, st, id.Vol); err != nil {
		// A snapshot may outlive its volume: if this one exists, it is
		// the answer to a retried request.
		if si, serr := vb.InspectSnapshot(ctx, st, id.Vol, id.Snap); serr == nil {
			return &csi.CreateSnapshotResponse{Snapshot: snapshotMessage(id, si)}, nil
		}
		return nil, toStatus(err, what)
	}
	if err := c.claimSnapshotName(ctx, st, id); err != nil {
		return nil, toStatus(err, what)
	}
	si, err := vb.CreateSnapshot(ctx, st, id.Vol, id.Snap, vb.SnapshotOptions{OwnerWait: c.opts.OwnerWait, MaxSnapshots: c.opts.MaxSnapshotsPerVolume, Logf: logf})
	if err != nil {
		return nil, toStatus(err, what)
	}
	klog.InfoS("created snapshot", "snapshot", id, "size", si.Size)
	return &csi.CreateSnapshotResponse{Snapshot: snapshotMessage(id, si)}, nil
}

// claimSnapshotName makes id.Vol the owner of the snapshot name, or fails
// with AlreadyExists if another volume has a snapshot by that name. A claim
// whose snapshot no longer exists (a delete that stopped half-way) is taken
// over.
func (c *ControllerServer) claimSnapshotName(ctx context.Context, st backend.Store, id snapshotID) error {
	for attempt := 0; attempt < 5; attempt++ {
		var cl snapClaim
		ver, found, err := getRecord(ctx, st, snapClaimKey(id.Snap), &cl)
		if err != nil {
			return err
		}
		if found && cl.Volume == id.Vol {
			return nil
		}
		if found {
			_, err := vb.InspectSnapshot(ctx, st, cl.Volume, id.Snap)
			if err == nil {
				return status.Errorf(codes.AlreadyExists, "snapshot name %s is taken by volume %s", id.Snap, volumeID{Store: id.Store, Vol: cl.Volume})
			}
			if !errors.Is(err, vb.ErrNotFound) {
				return err
			}
		}
		ok, err := putRecord(ctx, st, snapClaimKey(id.Snap), snapClaim{Volume: id.Vol, Time: time.Now().UTC()}, ver)
		if err != nil || ok {
			return err
		}
	}
	return status.Errorf(codes.Aborted, "snapshot name %s: claim changed concurrently; retry", id.Snap)
}

// DeleteSnapshot deletes a snapshot; clones made from it keep the data
// they use. Deleting a snapshot that does not exist succeeds.
func (c *ControllerServer) DeleteSnapshot(ctx context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	if req.GetSnapshotId() == "" {
		return nil, invalidArg("snapshot_id is required")
	}
	id, err := parseSnapshotID(req.GetSnapshotId())
	if err != nil {
		klog.InfoS("delete of a malformed snapshot ID: nothing to do", "snapshotID", req.GetSnapshotId(), "reason", err)
		return &csi.DeleteSnapshotResponse{}, nil
	}
	if _, err := c.stores.url(id.Store); err != nil {
		return &csi.DeleteSnapshotResponse{}, nil
	}
	what := "delete snapshot " + id.String()
	release, err := c.locks.acquire("snapshot:" + id.Store + "/" + id.Snap)
	if err != nil {
		return nil, toStatus(err, what)
	}
	defer release()
	st, err := c.store(ctx, id.Store, req.GetSecrets())
	if err != nil {
		return nil, toStatus(err, what)
	}
	if err := vb.DeleteSnapshot(ctx, st, id.Vol, id.Snap); err != nil && !errors.Is(err, vb.ErrNotFound) {
		return nil, toStatus(err, what)
	}
	var cl snapClaim
	ver, found, err := getRecord(ctx, st, snapClaimKey(id.Snap), &cl)
	if err != nil {
		return nil, toStatus(err, what)
	}
	if found && cl.Volume == id.Vol {
		// Not conditional on ver: the claim is ours and the snapshot is gone.
		_ = ver
		if err := st.Delete(ctx, snapClaimKey(id.Snap)); err != nil {
			return nil, toStatus(err, what)
		}
	}
	klog.InfoS("deleted snapshot", "snapshot", id)
	return &csi.DeleteSnapshotResponse{}, nil
}

// ListSnapshots lists snapshots, optionally one by ID or those of one
// volume, ordered by snapshot ID with the last ID of a page as the token.
// Snapshots of deleted volumes are found through their name claims.
func (c *ControllerServer) ListSnapshots(ctx context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	if req.GetMaxEntries() < 0 {
		return nil, invalidArg("max_entries must not be negative")
	}
	after := req.GetStartingToken()
	if after != "" {
		if _, err := parseSnapshotID(after); err != nil {
			return nil, status.Errorf(codes.Aborted, "starting_token %q is not a token this driver issued", after)
		}
	}
	var entries []*csi.ListSnapshotsResponse_Entry
	add := func(id snapshotID, si vb.SnapshotInfo) {
		if id.String() > after {
			entries = append(entries, &csi.ListSnapshotsResponse_Entry{Snapshot: snapshotMessage(id, si)})
		}
	}
	switch {
	case req.GetSnapshotId() != "":
		id, err := parseSnapshotID(req.GetSnapshotId())
		if err != nil || (req.GetSourceVolumeId() != "" && req.GetSourceVolumeId() != id.volume().String()) {
			break
		}
		if _, err := c.stores.url(id.Store); err != nil {
			break
		}
		st, err := c.store(ctx, id.Store, req.GetSecrets())
		if err != nil {
			return nil, toStatus(err, "list snapshots")
		}
		si, err := vb.InspectSnapshot(ctx, st, id.Vol, id.Snap)
		if errors.Is(err, vb.ErrNotFound) {
			break
		}
		if err != nil {
			return nil, toStatus(err, "list snapshots")
		}
		add(id, si)
	case req.GetSourceVolumeId() != "":
		vid, err := parseVolumeID(req.GetSourceVolumeId())
		if err != nil {
			break
		}
		if _, err := c.stores.url(vid.Store); err != nil {
			break
		}
		st, err := c.store(ctx, vid.Store, req.GetSecrets())
		if err != nil {
			return nil, toStatus(err, "list snapshots")
		}
		snaps, err := vb.ListSnapshots(ctx, st, vid.Vol)
		if err != nil && !errors.Is(err, vb.ErrNotFound) {
			return nil, toStatus(err, "list snapshots")
		}
		for _, si := range snaps {
			add(snapshotID{Store: vid.Store, Vol: vid.Vol, Snap: si.Name}, si)
		}
	default:
		for _, name := range c.stores.names() {
			st, err := c.store(ctx, name, req.GetSecrets())
			if err != nil {
				return nil, toStatus(err, "list snapshots in store "+name)
			}
			if _, skip := tokenIn(name+"/", after); skip {
				continue
			}
			if err := c.allSnapshots(ctx, st, name, after, add); err != nil {
				return nil, toStatus(err, "list snapshots in store "+name)
			}
		}
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Snapshot.SnapshotId < entries[j].Snapshot.SnapshotId })
	resp := &csi.ListSnapshotsResponse{Entries: entries}
	if n := int(req.GetMaxEntries()); n > 0 && len(entries) > n {
		resp.Entries = entries[:n]
		resp.NextToken = entries[n-1].Snapshot.SnapshotId
	}
	return resp, nil
}

// allSnapshots lists the snapshots of a store's live volumes and those
// named by CSI claims (whose volume may be deleted), each once.
func (c *ControllerServer) allSnapshots(ctx context.Context, st backend.Store, store, after string, add func(snapshotID, vb.SnapshotInfo)) error {
	seen := map[string]bool{}
	vols, err := vb.List(ctx, st)
	if err != nil {
		return err
	}
	for _, v := range vols {
		if validObjectName(v) != nil {
			continue
		}
		if _, skip := tokenIn(store+"/"+v+"@", after); skip {
			continue // every snapshot of v is on an earlier page
		}
		snaps, err := vb.ListSnapshots(ctx, st, v)
		if errors.Is(err, vb.ErrNotFound) {
			continue
		}
		if errors.Is(err, vb.ErrCorrupt) {
			// One damaged snapshot object: the volume's snapshots are
			// left out of the listing, not the whole store's.
			klog.ErrorS(err, "cannot read a snapshot of a volume; leaving its snapshots out of the listing", "volume", volumeID{Store: store, Vol: v})
			continue
		}
		if err != nil {
			return err
		}
		for _, si := range snaps {
			id := snapshotID{Store: store, Vol: v, Snap: si.Name}
			seen[id.String()] = true
			add(id, si)
		}
	}
	claims, err := listRecords(ctx, st, metaPrefix+"/snapshots/")
	if err != nil {
		return err
	}
	for _, snap := range claims {
		var cl snapClaim
		_, found, err := getRecord(ctx, st, snapClaimKey(snap), &cl)
		if err != nil {
			return err
		}
		if !found || validObjectName(cl.Volume) != nil {
			continue
		}
		id := snapshotID{Store: store, Vol: cl.Volume, Snap: snap}
		if seen[id.String()] || id.String() <= after {
			continue
		}
		si, err := vb.InspectSnapshot(ctx, st, cl.Volume, snap)
		if errors.Is(err, vb.ErrNotFound) {
			continue
		}
		if errors.Is(err, vb.ErrCorrupt) {
			klog.ErrorS(err, "cannot read a snapshot; leaving it out of the listing", "snapshot", id)
			continue
		}
		if err != nil {
			return err
		}
		add(id, si)
	}
	return nil
}
