package driver

import (
	"context"
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
// node that still had it.
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
			return nil, op.fail(err)
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
	var rec publishRecord
	_, found, err := getRecord(ctx, st, publishKey(id.Vol), &rec)
	if err != nil {
		return nil, op.fail(err)
	}
	if !found || (req.GetNodeId() != "" && rec.Node != req.GetNodeId()) {
		return &csi.ControllerUnpublishVolumeResponse{}, nil
	}
	if err := st.Delete(ctx, publishKey(id.Vol)); err != nil {
		return nil, op.fail(err)
	}
	klog.InfoS("unpublished volume", "volume", id, "node", rec.Node)
	return &csi.ControllerUnpublishVolumeResponse{}, nil
}
