package driver

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"k8s.io/klog/v2"

	"github.com/viperblock/viperblock-csi/pkg/attach"
	"github.com/viperblock/viperblock-csi/pkg/nbdkit"
	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
)

// NodeUnstageVolume unmounts, detaches, stops nbdkit (which drains the
// volume to the store) and, once the store holds everything, removes the
// node's state and WAL. If the drain did not complete, the WAL stays and
// the call fails; a retry drains it.
func (n *NodeServer) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	op, noop, err := volumeCall{verb: "unstage volume", volumeID: req.GetVolumeId(),
		fields:    []string{"staging_target_path", req.GetStagingTargetPath()},
		malformed: malformedNoop, locks: &n.locks}.begin()
	if err != nil {
		return nil, err
	}
	if noop {
		return &csi.NodeUnstageVolumeResponse{}, nil
	}
	defer op.end()
	id := op.id
	st, ok, err := n.loadState(id)
	if err != nil {
		return nil, op.fail(err)
	}
	if !ok {
		return &csi.NodeUnstageVolumeResponse{}, nil
	}
	if err := n.unstage(ctx, id, st); err != nil {
		return nil, op.fail(err)
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
	n.stores.drop(url)
	os.Remove(p.Socket)
	os.Remove(p.Metrics)
	if n.events != nil {
		n.events.forget(id.String())
	}
	if err := os.RemoveAll(p.Dir); err != nil {
		return err
	}
	n.servers.remove(id)
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
		inf, err := vb.Stat(ctx, store, id.Vol)
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
				errNotDrained, inf.Epoch, n.paths(id).WALDir, nbdkit.LogTail(n.paths(id).Log, -1))
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
