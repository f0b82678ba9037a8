package driver

import (
	"context"
	"errors"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
)

// ControllerExpandVolume grows a volume. If a node has it open, that
// node's engine is asked to grow it (and the call waits for the answer up
// to --owner-wait); otherwise the store is updated directly. The node then
// resizes the device and the filesystem (NodeExpandVolume).
func (c *ControllerServer) ControllerExpandVolume(ctx context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	op, _, err := volumeCall{verb: "expand volume", volumeID: req.GetVolumeId(), capability: req.GetVolumeCapability(), locks: &c.locks}.begin()
	if err != nil {
		return nil, err
	}
	defer op.end()
	id := op.id
	if req.GetCapacityRange() == nil {
		return nil, invalidArg("capacity_range is required")
	}
	size, err := requestedSize(req.GetCapacityRange(), 0)
	if err != nil {
		return nil, err
	}
	st, err := c.store(ctx, id.Store, req.GetSecrets())
	if err != nil {
		return nil, op.fail(err)
	}
	inf, err := vb.Stat(ctx, st, id.Vol)
	if err != nil {
		return nil, op.fail(err)
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
			return nil, op.fail(err)
		}
		klog.InfoS("expanded volume", "volume", id, "from", inf.Size, "to", newSize, "open", inf.Open)
	}
	if lim := req.GetCapacityRange().GetLimitBytes(); lim > 0 && newSize > lim {
		return nil, status.Errorf(codes.OutOfRange, "volume %s already holds %d bytes, more than limit_bytes %d", id, newSize, lim)
	}
	return &csi.ControllerExpandVolumeResponse{CapacityBytes: newSize, NodeExpansionRequired: true}, nil
}
