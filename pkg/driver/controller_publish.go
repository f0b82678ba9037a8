package driver

import (
	"context"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
)

// ControllerPublishVolume records that a volume is published to a node.
// A volume is published to one node at a time (single-node access modes);
// the node that opens it takes ownership in the store, which fences any
// node that still had it. A MULTI_NODE_MULTI_WRITER block volume (a VM disk
// that live-migrates) may be published to a second node while it is
// published to a first: the second stages it in standby and takes it over
// at the migration's switch-over (NodeStageVolume); then the first is
// unpublished. Never to a third.
func (c *ControllerServer) ControllerPublishVolume(ctx context.Context, req *csi.ControllerPublishVolumeRequest) (*csi.ControllerPublishVolumeResponse, error) {
	op, _, err := volumeCall{verb: "publish volume", volumeID: req.GetVolumeId(), fields: []string{"node_id", req.GetNodeId()},
		capability: req.GetVolumeCapability(), needCap: true, locks: &c.locks}.begin()
	if err != nil {
		return nil, err
	}
	defer op.end()
	id, acc := op.id, op.acc
	if err := validNodeID(req.GetNodeId()); err != nil {
		return nil, status.Errorf(codes.NotFound, "%v", err)
	}
	st, err := c.store(ctx, id.Store, req.GetSecrets())
	if err != nil {
		return nil, op.fail(err)
	}
	if _, err := vb.Stat(ctx, st, id.Vol); err != nil {
		return nil, op.fail(err)
	}
	ok, err := c.nodes.NodeExists(ctx, req.GetNodeId(), st)
	if err != nil {
		return nil, op.fail(err)
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
			return nil, op.fail(err)
		}
		next := want
		if found {
			if rec.Node == want.Node || rec.Also == want.Node {
				if rec.ReadOnly != want.ReadOnly || rec.Block != want.Block {
					return nil, status.Errorf(codes.AlreadyExists, "volume %s is published to node %s with other options (readonly %v, block %v)", id, want.Node, rec.ReadOnly, rec.Block)
				}
				return &csi.ControllerPublishVolumeResponse{PublishContext: pctx}, nil
			}
			migrating := acc.migratable() && rec.Mode == want.Mode && rec.Block && !rec.ReadOnly && !want.ReadOnly
			switch {
			case !migrating:
				return nil, status.Errorf(codes.FailedPrecondition, "volume %s is published to node %s; a volume is served by one node at a time (only a MULTI_NODE_MULTI_WRITER block volume may be published to a second node, to live-migrate)", id, rec.Node)
			case rec.Also != "":
				return nil, status.Errorf(codes.FailedPrecondition, "volume %s is published to nodes %s and %s (a live migration); a third node must wait until one is unpublished", id, rec.Node, rec.Also)
			}
			next = rec
			next.Also = want.Node
		}
		ok, err := putRecord(ctx, st, publishKey(id.Vol), next, ver)
		if err != nil {
			return nil, op.fail(err)
		}
		if ok {
			if next.Also != "" {
				klog.InfoS("published volume to a second node (live migration)", "volume", id, "node", want.Node, "from", next.Node)
			}
			klog.InfoS("published volume", "volume", id, "node", want.Node, "readonly", want.ReadOnly)
			return &csi.ControllerPublishVolumeResponse{PublishContext: pctx}, nil
		}
	}
	return nil, status.Errorf(codes.Aborted, "volume %s: publication changed concurrently; retry", id)
}

// ControllerUnpublishVolume removes the publication record. Unpublishing
// what is not published (or from another node) succeeds.
func (c *ControllerServer) ControllerUnpublishVolume(ctx context.Context, req *csi.ControllerUnpublishVolumeRequest) (*csi.ControllerUnpublishVolumeResponse, error) {
	op, noop, err := volumeCall{verb: "unpublish volume", volumeID: req.GetVolumeId(), malformed: malformedNoop, locks: &c.locks}.begin()
	if err != nil {
		return nil, err
	}
	if noop {
		return &csi.ControllerUnpublishVolumeResponse{}, nil
	}
	defer op.end()
	id := op.id
	if _, err := c.stores.url(id.Store); err != nil {
		return &csi.ControllerUnpublishVolumeResponse{}, nil
	}
	st, err := c.store(ctx, id.Store, req.GetSecrets())
	if err != nil {
		return nil, op.fail(err)
	}
	node := req.GetNodeId()
	for attempt := 0; attempt < 5; attempt++ {
		var rec publishRecord
		ver, found, err := getRecord(ctx, st, publishKey(id.Vol), &rec)
		if err != nil {
			return nil, op.fail(err)
		}
		if !found || (node != "" && rec.Node != node && rec.Also != node) {
			return &csi.ControllerUnpublishVolumeResponse{}, nil
		}
		if node == "" || rec.Also == "" {
			if err := st.Delete(ctx, publishKey(id.Vol)); err != nil {
				return nil, op.fail(err)
			}
			klog.InfoS("unpublished volume", "volume", id, "node", strings.Join(rec.nodes(), ","))
			return &csi.ControllerUnpublishVolumeResponse{}, nil
		}
		// Published to two nodes (a live migration): keep the other.
		next := rec
		if rec.Node == node {
			next.Node = rec.Also
		}
		next.Also = ""
		ok, err := putRecord(ctx, st, publishKey(id.Vol), next, ver)
		if err != nil {
			return nil, op.fail(err)
		}
		if ok {
			klog.InfoS("unpublished volume from one of its two nodes", "volume", id, "node", node, "remaining", next.Node)
			return &csi.ControllerUnpublishVolumeResponse{}, nil
		}
	}
	return nil, status.Errorf(codes.Aborted, "volume %s: publication changed concurrently; retry", id)
}
