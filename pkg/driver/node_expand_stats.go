package driver

import (
	"context"
	"fmt"
	"os"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
)

// stagedAt returns the state of a volume staged here whose staging or
// target path is path.
func (n *NodeServer) stagedAt(id volumeID, path string) (*volState, error) {
	st, ok, err := n.loadState(id)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("volume %s: %w", id, errNotStaged)
	}
	if path != "" && path != st.StagingPath && !st.hasTarget(path) {
		return nil, status.Errorf(codes.NotFound, "volume %s is not staged or published at %s", id, path)
	}
	return st, nil
}

// NodeGetVolumeStats reports bytes and inodes of a filesystem volume, or
// the size of a block volume.
func (n *NodeServer) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	op, _, err := volumeCall{verb: "volume stats", volumeID: req.GetVolumeId(), fields: []string{"volume_path", req.GetVolumePath()}}.begin()
	if err != nil {
		return nil, err
	}
	path, id := req.GetVolumePath(), op.id
	st, err := n.stagedAt(id, path)
	if err != nil {
		return nil, op.fail(err)
	}
	if _, err := os.Stat(path); err != nil {
		return nil, status.Errorf(codes.NotFound, "volume %s: %s: %v", id, path, err)
	}
	if st.Block || isBlockDevice(path) {
		size, err := n.mnt.DeviceSize(path)
		if err != nil {
			return nil, op.fail(err)
		}
		return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{{Unit: csi.VolumeUsage_BYTES, Total: size}}}, nil
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return nil, op.fail(err)
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
	op, _, err := volumeCall{verb: "expand volume", volumeID: req.GetVolumeId(), fields: []string{"volume_path", req.GetVolumePath()},
		capability: req.GetVolumeCapability(), locks: &n.locks}.begin()
	if err != nil {
		return nil, err
	}
	defer op.end()
	id := op.id
	st, err := n.stagedAt(id, req.GetVolumePath())
	if err != nil {
		return nil, op.fail(err)
	}
	// The store says how large the volume is now (the controller grew it,
	// and the volume's engine in nbdkit grew with it).
	url, err := n.volumeURL(id, st)
	if err != nil {
		return nil, op.fail(err)
	}
	store, err := n.volumeStore(ctx, url)
	if err != nil {
		return nil, op.fail(err)
	}
	inf, err := vb.Stat(ctx, store, id.Vol)
	if err != nil {
		return nil, op.fail(err)
	}
	if inf.Size > st.Size {
		st.Size = inf.Size
	}
	dev, err := n.att.Resize(ctx, n.export(id, st))
	if err != nil {
		return nil, op.fail(fmt.Errorf("resize device: %w", err))
	}
	if dev.Path != "" {
		st.Device = dev.Path
	}
	if err := n.saveState(id, st); err != nil {
		return nil, op.fail(err)
	}
	if want := req.GetCapacityRange().GetRequiredBytes(); want > 0 && dev.Size < want {
		return nil, status.Errorf(codes.Unavailable, "volume %s: the device shows %d bytes, less than %d: the volume has not grown yet (is ControllerExpandVolume done?)", id, dev.Size, want)
	}
	if !st.Block && !st.ReadOnly {
		if err := n.mnt.ResizeFS(st.Device, st.StagingPath); err != nil {
			return nil, op.fail(fmt.Errorf("grow filesystem: %w", err))
		}
	}
	klog.InfoS("expanded volume on node", "volume", id, "size", dev.Size)
	return &csi.NodeExpandVolumeResponse{CapacityBytes: dev.Size}, nil
}
