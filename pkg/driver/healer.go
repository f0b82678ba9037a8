package driver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"k8s.io/klog/v2"

	"github.com/viperblock/viperblock-csi/pkg/attach"
)

// Heal runs at start-up: for each volume an earlier node plugin process
// left staged, it re-adopts the running nbdkit (or restarts it: it replays
// the WAL) and the attachment (or attaches again), and remounts what is no
// longer mounted. Mounted filesystems keep working across a restart of the
// node plugin because nbdkit and the attachment never stopped.
//
// The healer never steals a volume: it restarts an nbdkit only while the
// volume is still this node's (checkOwner), and the nbdkit it starts takes
// ownership only back from this node's WAL (resume_only=true; see
// ensureServer), so a takeover between the check and nbdkit's open fails
// the open instead of fencing the new owner. If another owner has taken it
// over, the volume is left closed and reported fenced (NodeGetVolumeHealth)
// until NodeUnstageVolume; if the store cannot be reached to tell, the
// healer retries later.
func (n *NodeServer) Heal(ctx context.Context) {
	ids, err := n.stagedVolumes()
	if err != nil {
		klog.ErrorS(err, "cannot list staged volumes")
		return
	}
	for _, id := range ids {
		if err := n.heal(ctx, id); err != nil {
			klog.ErrorS(err, "could not heal a staged volume; will retry", "volume", id)
			go n.healLater(id)
		}
	}
}

// healLater retries heal with backoff until it succeeds, the volume is no
// longer staged or the server closes.
func (n *NodeServer) healLater(id volumeID) {
	delay := time.Second
	for attempt := 0; attempt < 20; attempt++ {
		time.Sleep(delay)
		if n.servers.isClosed() {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		err := n.heal(ctx, id)
		cancel()
		if err == nil {
			return
		}
		if !errors.Is(err, errInFlight) {
			klog.ErrorS(err, "healing a staged volume failed; retrying", "volume", id, "in", delay)
		}
		delay = min(2*delay, 30*time.Second)
	}
	klog.ErrorS(nil, "gave up healing a staged volume", "volume", id)
}

// heal brings one staged volume back to its staged state.
func (n *NodeServer) heal(ctx context.Context, id volumeID) error {
	release, err := n.locks.acquire(id.String())
	if err != nil {
		return err
	}
	defer release()
	st, ok, err := n.loadState(id)
	if err != nil || !ok {
		return err
	}
	if !st.Staged {
		klog.InfoS("volume was left half-staged; the CO's retry of NodeStageVolume or NodeUnstageVolume finishes it", "volume", id)
		return nil
	}
	if st.Fenced != "" {
		klog.InfoS("volume was taken over by another owner; it stays closed on this node until NodeUnstageVolume", "volume", id)
		return nil
	}
	url, err := n.volumeURL(id, st)
	if err != nil {
		return err
	}
	wasRunning := n.running(id) != nil
	srv, err := n.ensureServer(ctx, id, st, url, true)
	if errors.Is(err, errOwnedElsewhere) {
		return n.fence(id, st, err)
	}
	if err != nil {
		return err
	}
	restarted := !wasRunning && !srv.Adopted()
	if restarted {
		n.metrics.NbdkitRestarts.Inc()
		if !st.ReadOnly {
			store, err := n.volumeStore(ctx, url)
			if err != nil {
				return err
			}
			if err := n.recordOwner(ctx, id, st, store); err != nil {
				return err
			}
		}
	}
	dev, found, err := n.att.Find(ctx, id.key())
	if errors.Is(err, attach.ErrStale) {
		klog.ErrorS(err, "the volume's attachment is broken; attaching anew", "volume", id)
		found, restarted = false, false
	} else if err != nil {
		return fmt.Errorf("find attachment: %w", err)
	}
	switch {
	case found && restarted:
		// The device's connections went with the old nbdkit: give the
		// kernel new ones (kernel NBD holds I/O meanwhile). nbdfuse
		// cannot reconnect; its device stays broken until restaged.
		rc, ok := n.att.(attach.Reconnecter)
		if !ok {
			err = fmt.Errorf("%w: the attacher cannot reconnect a device to a restarted server", attach.ErrUnsupported)
		} else {
			dev, err = rc.Reconnect(ctx, n.export(id, st))
		}
		switch {
		case errors.Is(err, attach.ErrUnsupported):
			// nbdfuse: its connection died with the old nbdkit and
			// cannot be remade under a mounted filesystem. The volume's
			// data is safe (flushed writes are in the WAL the new nbdkit
			// replayed); the device fails I/O until the volume is
			// unstaged and staged again.
			n.servers.setBroken(id, "the device lost its connection to nbdkit and cannot reconnect; restage the volume")
			klog.ErrorS(err, "nbdkit restarted but the device cannot reconnect to it; I/O on the volume fails until it is restaged", "volume", id)
			dev, _, _ = n.att.Find(ctx, id.key())
		case err != nil:
			return fmt.Errorf("reconnect: %w", err)
		default:
			n.servers.setBroken(id, "")
		}
	case !found:
		if dev, err = n.att.Attach(ctx, n.export(id, st)); err != nil {
			return fmt.Errorf("attach: %w", err)
		}
	}
	if st.Device != "" && dev.Path != st.Device {
		klog.ErrorS(nil, "volume came back on another device; mounts of the old device will fail until the volume is restaged",
			"volume", id, "old", st.Device, "new", dev.Path)
	}
	st.Device = dev.Path
	if !st.Block {
		if err := n.mountStaging(dev.Path, st); err != nil {
			return err
		}
	}
	for _, t := range st.Targets {
		if _, err := os.Lstat(t); err != nil {
			continue // unpublished behind our back; the CO publishes again if it wants
		}
		if m, err := n.mnt.IsMountPoint(t); err == nil && !m {
			src := st.StagingPath
			if st.Block {
				src = st.Device
			}
			if err := n.mnt.Mount(src, t, "", []string{"bind"}); err != nil {
				return fmt.Errorf("re-publish at %s: %w", t, err)
			}
		}
	}
	if err := n.saveState(id, st); err != nil {
		return err
	}
	n.servers.healed(id)
	klog.InfoS("healed staged volume", "volume", id, "nbdkit", srv.Pid(), "adopted", srv.Adopted(), "restarted", restarted, "device", dev.Path)
	return nil
}
