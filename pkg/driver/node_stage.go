package driver

import (
	"context"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/viperblock/viperblock-csi/pkg/units"
	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/vfs"
)

// NodeStageVolume starts nbdkit for the volume, attaches it as a block
// device and, for a filesystem volume, formats it if blank and mounts it at
// the staging path. Every step is idempotent, so a retry after a failure
// (or after a restart of this plugin) resumes where it stopped.
func (n *NodeServer) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	op, _, err := volumeCall{verb: "stage volume", volumeID: req.GetVolumeId(),
		fields:     []string{"staging_target_path", req.GetStagingTargetPath()},
		capability: req.GetVolumeCapability(), needCap: true, locks: &n.locks}.begin()
	if err != nil {
		return nil, err
	}
	defer op.end()
	id, acc := op.id, op.acc
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

	st, existed, err := n.loadState(id)
	if err != nil {
		return nil, op.fail(err)
	}
	if existed && st.Fenced != "" {
		// The healer left the volume closed: another owner took it over.
		// Staging it again here is a new stage, which takes ownership:
		// tear the old one down first (its WAL is quarantined).
		klog.InfoS("staging a volume that another owner had taken over from this node: starting afresh", "volume", id)
		if err := n.unstage(ctx, id, st); err != nil {
			return nil, op.fail(err)
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
		// Each staged volume's server has its share of the memory
		// budget: more volumes than the budget was divided by would
		// overrun it (see memory.go).
		if !n.takeSlot() {
			return nil, status.Errorf(codes.ResourceExhausted, "volume %s: this node has %d volumes staged, its limit (--max-volumes-per-node; each volume has 1/%d of the memory budget %s)",
				id, n.opts.MaxVolumesPerNode, n.opts.MaxVolumesPerNode, units.Format(n.opts.MemoryBudget))
		}
		defer n.releaseSlot()
		st = &volState{StagingPath: req.GetStagingTargetPath(), Block: acc.Block, FsType: fsType, MountFlags: acc.MountFlags,
			Mode: acc.Mode.String(), ReadOnly: acc.readOnly(), MkfsOptions: vp.MkfsOptions, Cache: vp.Cache, Drain: vp.DrainInterval,
			Durability: vp.Durability, Lease: vp.LeaseDuration}
	}
	if err := n.stage(ctx, id, st, req.GetSecrets()); err != nil {
		if !existed {
			n.rollback(id, st)
		}
		return nil, op.fail(err)
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
	key, err := encryptionKey(secrets)
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
	inf, err := vb.Stat(ctx, store, id.Vol)
	if err != nil {
		return err
	}
	// An encrypted volume's server reads its KEK from a file in the
	// volume's state directory (tmpfs): checked here first, so a missing
	// or wrong key fails the stage with a clear error, not nbdkit's start.
	if err := checkKey("volume "+id.String(), inf.Encrypted, inf.KEKID, key); err != nil {
		return err
	}
	if inf.Encrypted {
		if err := writePrivateFile(p.Key, key.file); err != nil {
			return fmt.Errorf("write the encryption key: %w", err)
		}
		if !st.Key {
			st.Key = true
			if err := n.saveState(id, st); err != nil {
				return err
			}
		}
	}
	if st.Size == 0 || inf.Size > st.Size {
		st.Size = inf.Size
	}
	if err := registerNode(ctx, store, n.opts.NodeID); err != nil {
		klog.InfoS("could not register this node in the store", "store", id.Store, "err", err)
	}
	fresh := n.running(id) == nil
	if fresh && !st.ReadOnly && st.Mode == csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER.String() {
		// A migratable block volume open on another node: this node is
		// the target of a live migration. Stage it in standby; the
		// first write here takes it over (the guest runs here then).
		standby, err := n.openElsewhere(ctx, id, store)
		if err != nil {
			return err
		}
		if standby != st.Standby {
			st.Standby = standby
			if err := n.saveState(id, st); err != nil {
				return err
			}
		}
		if standby {
			klog.InfoS("volume is open on another node: staging it in standby (live migration target)", "volume", id, "epoch", inf.Epoch)
		}
	}
	// NodeStage takes ownership: the CO published the volume to this node
	// (in standby: at the first write).
	if _, err := n.ensureServer(ctx, id, st, url, false); err != nil {
		return err
	}
	if fresh && !st.ReadOnly && !st.Standby {
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
	if st.FsType == "xfs" && !slices.Contains(opts, "nouuid") {
		// A clone or a restored snapshot of an xfs volume carries its
		// source's filesystem UUID, and xfs refuses to mount a UUID that
		// is mounted already: a clone staged on the node where its source
		// (or another clone) is mounted would fail.
		opts = append(opts, "nouuid")
	}
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
