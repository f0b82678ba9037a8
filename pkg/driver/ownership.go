package driver

import (
	"context"
	"errors"
	"fmt"
	"time"

	"k8s.io/klog/v2"

	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

// Ownership of a staged volume.
//
// A writable open takes ownership of a volume unconditionally: the engine
// bumps the epoch in the volume's manifest, fencing whoever had it. That is
// right for NodeStageVolume (the CO published the volume to this node), and
// wrong whenever the node opens a volume again on its own initiative: the
// healer restarting an nbdkit that died, or an unstage serving the volume
// once more to drain it. If the volume was meanwhile force-detached and
// staged on another node, that open would fence the other node's nbdkit and
// quarantine its undrained writes, for a pod that no longer runs here.
//
// So before such an open the node checks that the volume is still its own.
// Its record is the OWNER file the engine keeps in the volume's WAL
// directory here: the (epoch, owner nonce) of the last open on this node
// (and of an open in progress). The volume is still ours iff the manifest's
// current (epoch, nonce) is that pair: the engine's own test, at open, of
// "nobody else has owned the volume since this WAL was written". The state
// file's Epoch, taken from the OWNER file after each (re)start, guards the
// one case where the OWNER file names another owner's pair: an open on this
// node that did not finish (its OWNER file records the ownership it was
// taking over from).
//
// The check alone leaves a window: another node can take the volume over
// between it and nbdkit's open, which would then steal it. So the nbdkit
// of such a reopen runs with resume_only=true (vb.Options.ResumeOnly): the
// engine repeats the test against the manifest it reads, and its epoch
// bump is a compare-and-swap on that manifest's version, so a takeover at
// any point before the bump makes nbdkit exit with nbdkitExitNotOwner,
// having changed nothing; the node treats that exactly as a failed check.

// checkOwner returns nil if the store's current owner of the volume is this
// node's open, an error wrapping errOwnedElsewhere if another owner has
// taken the volume over since, and any other error (the store cannot be
// reached, the volume is gone) when it cannot tell. recorded reports
// whether the WAL directory has an OWNER file (what a resume-only open
// checks; see ensureServer).
func (n *NodeServer) checkOwner(ctx context.Context, id volumeID, st *volState, store backend.Store) (recorded bool, err error) {
	epoch, nonce, err := vb.Owner(ctx, store, id.Vol)
	if err != nil {
		return false, err
	}
	own, found, err := vb.WALOwner(nil, n.paths(id).WALDir, id.Vol)
	if err != nil {
		return false, fmt.Errorf("read this node's record of the volume's ownership: %w", err)
	}
	var ours bool
	if st.Standby {
		// Staged in standby: ours once nbdkit's handoff took it over.
		ours = found && ownsByOpen(own, epoch, nonce)
	} else if found {
		ours = own.Owns(epoch, nonce) && st.Epoch != 0 && epoch >= st.Epoch
	} else {
		// No OWNER file (the WAL directory was lost): the epoch recorded
		// at the last (re)start is all there is. Epochs only grow, so the
		// same epoch is the same open.
		ours = st.Epoch != 0 && epoch == st.Epoch
	}
	if !ours {
		return found, fmt.Errorf("%w (the store's owner has epoch %d, this node's open had epoch %d)", errOwnedElsewhere, epoch, st.Epoch)
	}
	return found, nil
}

// ownsByOpen reports whether an open in this WAL directory made (or was
// making) (epoch, nonce) the store's owner: not merely the owner it was
// taking the volume over from, whose pair an unfinished open's OWNER file
// also names.
func ownsByOpen(own vb.WALOwnership, epoch uint64, nonce [16]byte) bool {
	if own.PendingEpoch != 0 {
		return own.PendingEpoch == epoch && own.PendingNonce == nonce
	}
	return own.Epoch == epoch && own.Nonce == nonce
}

// openElsewhere reports whether the volume is open for writing by an
// owner other than an open in this node's WAL directory.
func (n *NodeServer) openElsewhere(ctx context.Context, id volumeID, store backend.Store) (bool, error) {
	inf, err := vb.Stat(ctx, store, id.Vol)
	if err != nil || !inf.Open {
		return false, err
	}
	epoch, nonce, err := vb.Owner(ctx, store, id.Vol)
	if err != nil {
		return false, err
	}
	own, found, err := vb.WALOwner(nil, n.paths(id).WALDir, id.Vol)
	if err != nil {
		return false, fmt.Errorf("read this node's record of the volume's ownership: %w", err)
	}
	return !found || !ownsByOpen(own, epoch, nonce), nil
}

// restartCheck is checkOwner for ensureServer: it runs just before a new
// nbdkit would reopen a writable volume on the node's own initiative.
func (n *NodeServer) restartCheck(ctx context.Context, id volumeID, st *volState, url string) (recorded bool, err error) {
	store, err := n.volumeStore(ctx, url)
	if err != nil {
		return false, err
	}
	recorded, err = n.checkOwner(ctx, id, st, store)
	if err != nil && !errors.Is(err, errOwnedElsewhere) && !errors.Is(err, vb.ErrNotFound) && !errors.Is(err, vb.ErrCorrupt) {
		n.metrics.StoreErrors.WithLabelValues(id.Store).Inc()
	}
	return recorded, err
}

// recordOwner records in st the ownership epoch of the volume's open on
// this node, after an nbdkit (re)started: the epoch the engine wrote into
// the WAL's OWNER file once it had taken ownership. Without an OWNER file
// (or with an open still in progress), the store's epoch.
func (n *NodeServer) recordOwner(ctx context.Context, id volumeID, st *volState, store backend.Store) error {
	own, found, err := vb.WALOwner(nil, n.paths(id).WALDir, id.Vol)
	if err != nil {
		return err
	}
	if found && own.PendingEpoch == 0 {
		st.Epoch = own.Epoch
		return nil
	}
	inf, err := vb.Stat(ctx, store, id.Vol)
	if err != nil {
		return err
	}
	st.Epoch = inf.Epoch
	return nil
}

// fence records that another owner has taken the volume over while its
// nbdkit was down: the volume stays closed (no nbdkit, no remount), health
// reports it fenced, and its state stays until NodeUnstageVolume.
func (n *NodeServer) fence(id volumeID, st *volState, cause error) error {
	st.Fenced = fmt.Sprintf("fenced: another owner took the volume over while its nbdkit was down; it is not served on this node again until unstaged and staged anew (%v)", cause)
	if err := n.saveState(id, st); err != nil {
		return err
	}
	klog.ErrorS(cause, "another owner took the volume over while its nbdkit was down; not restarting it: the volume stays closed on this node until it is unstaged",
		"volume", id, "ourEpoch", st.Epoch)
	return nil
}

// quarantineWAL sets aside the WAL of a volume another owner has taken over
// (vb.QuarantineStaleWAL): its writes were fenced, no open may replay them,
// and they are kept for inspection rather than deleted.
func (n *NodeServer) quarantineWAL(ctx context.Context, id volumeID, store backend.Store) error {
	dir, err := vb.QuarantineStaleWAL(ctx, store, nil, n.paths(id).WALDir, id.Vol)
	if errors.Is(err, vb.ErrNotFound) {
		return nil // the volume is gone; its WAL is no one's and stays (unstage removes drained WALs only)
	}
	if err != nil {
		return fmt.Errorf("quarantine the stale WAL: %w", err)
	}
	if dir != "" {
		klog.InfoS("this node's unuploaded writes to the volume were fenced by another owner; its WAL is kept for inspection, never replayed",
			"volume", id, "dir", dir, "retention", n.opts.StaleWALRetention)
	}
	if gone, err := vb.PruneStaleWALs(nil, n.paths(id).WALDir, id.Vol, n.opts.StaleWALRetention, time.Now()); err != nil {
		klog.ErrorS(err, "could not remove stale WALs past their retention", "volume", id)
	} else if len(gone) > 0 {
		klog.InfoS("removed stale WALs past their retention", "volume", id, "dirs", gone)
	}
	return nil
}
