package driver

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

// NodePublishVolume bind-mounts the staged filesystem (or, for a block
// volume, the device node onto a file) at the target path.
func (n *NodeServer) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	op, _, err := volumeCall{verb: "publish volume", volumeID: req.GetVolumeId(),
		fields:     []string{"target_path", req.GetTargetPath(), "staging_target_path", req.GetStagingTargetPath()},
		capability: req.GetVolumeCapability(), needCap: true, locks: &n.locks}.begin()
	if err != nil {
		return nil, err
	}
	defer op.end()
	id, acc := op.id, op.acc
	st, ok, err := n.loadState(id)
	if err != nil {
		return nil, op.fail(err)
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
			return nil, op.fail(err)
		}
		f, err := os.OpenFile(target, os.O_CREATE|os.O_RDONLY, 0o600)
		if err != nil {
			return nil, op.fail(err)
		}
		f.Close()
	} else {
		opts = append(opts, acc.MountFlags...)
		if err := os.MkdirAll(target, 0o750); err != nil {
			return nil, op.fail(err)
		}
	}
	mounted, err := n.mnt.IsMountPoint(target)
	if err != nil {
		return nil, op.fail(err)
	}
	if !mounted {
		src := st.StagingPath
		if st.Block {
			src = st.Device
		}
		if err := n.mnt.Mount(src, target, "", opts); err != nil {
			return nil, op.fail(fmt.Errorf("bind %s at %s: %w", src, target, err))
		}
	}
	if !st.hasTarget(target) {
		st.Targets = append(st.Targets, target)
		if err := n.saveState(id, st); err != nil {
			return nil, op.fail(err)
		}
	}
	klog.InfoS("published volume", "volume", id, "target", target, "options", opts)
	return &csi.NodePublishVolumeResponse{}, nil
}

// NodeUnpublishVolume unmounts the target and removes it.
func (n *NodeServer) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	// A volume ID this driver cannot have issued has no state here, but
	// the target is still unmounted and removed.
	op, _, err := volumeCall{verb: "unpublish volume", volumeID: req.GetVolumeId(), fields: []string{"target_path", req.GetTargetPath()},
		malformed: malformedProceed, locks: &n.locks}.begin()
	if err != nil {
		return nil, err
	}
	defer op.end()
	target, id := req.GetTargetPath(), op.id
	if _, err := os.Lstat(target); err == nil {
		mounted, err := n.mnt.IsMountPoint(target)
		if err != nil && !isNotExist(err) {
			return nil, op.fail(err)
		}
		if mounted {
			if err := n.mnt.Unmount(target); err != nil {
				return nil, op.fail(fmt.Errorf("unmount %s: %w", target, err))
			}
		}
		if err := os.Remove(target); err != nil && !isNotExist(err) {
			return nil, op.fail(err)
		}
	} else if !isNotExist(err) {
		return nil, op.fail(err)
	}
	if op.idOK {
		if st, ok, err := n.loadState(id); err == nil && ok && st.hasTarget(target) {
			st.removeTarget(target)
			if err := n.saveState(id, st); err != nil {
				return nil, op.fail(err)
			}
		}
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}
