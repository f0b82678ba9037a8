package viperblock

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/vfs"
)

// Ownership without opening: what a supervisor of writable opens (a node
// agent restarting a server after a crash) needs in order to tell whether
// the volume is still its own before it opens it again, since an Open takes
// ownership unconditionally. The test is the one a writable Open applies
// before replaying a WAL (see owner.go): the WAL directory's OWNER file
// names the volume's current owner (the manifest's epoch and nonce) only if
// nobody else has owned the volume since that WAL was written.

// Owner reads who owns a volume now: the ownership epoch and owner nonce of
// its committed manifest (both zero for a volume never opened for writing).
// It opens nothing and writes nothing. A missing or deleted volume is
// ErrNotFound.
func Owner(ctx context.Context, store backend.Store, name string) (epoch uint64, nonce [16]byte, err error) {
	m, _, err := readLiveManifest(ctx, store, name)
	if err != nil {
		return 0, nonce, err
	}
	return m.Epoch, m.Owner, nil
}

// WALOwnership is what a WAL directory's OWNER file records: the ownership
// (epoch, nonce) its segments were written under, and the ownership an open
// was taking when it wrote the file, if that open had not finished.
type WALOwnership struct {
	Epoch        uint64
	Nonce        [16]byte
	PendingEpoch uint64 // 0: none
	PendingNonce [16]byte
}

// Owns reports whether the WAL belongs to the owner (epoch, nonce): whether
// a writable Open under that manifest ownership would replay it.
func (o WALOwnership) Owns(epoch uint64, nonce [16]byte) bool {
	return ownerRecord{o.Epoch, o.Nonce, o.PendingEpoch, o.PendingNonce}.owns(epoch, nonce)
}

// WALOwner reads the OWNER file of volume name's WAL under walDir (the
// directory given as Options.WALDir). found is false when there is none
// (the volume was never opened for writing there). A nil fsys is the
// operating system's filesystem.
func WALOwner(fsys vfs.FS, walDir, name string) (o WALOwnership, found bool, err error) {
	if err := validName(name); err != nil {
		return o, false, err
	}
	if fsys == nil {
		fsys = vfs.Default
	}
	r, found, err := readOwner(fsys, filepath.Join(walDir, name))
	if err != nil || !found {
		return o, false, err
	}
	return WALOwnership{Epoch: r.epoch, Nonce: r.nonce, PendingEpoch: r.pendingEpoch, PendingNonce: r.pendingNonce}, true, nil
}

// WALOwnedBy reports whether volume name's WAL under walDir belongs to the
// owner (epoch, nonce), as Owner returns it; found is false when the WAL
// directory has no OWNER file.
func WALOwnedBy(fsys vfs.FS, walDir, name string, epoch uint64, nonce [16]byte) (owned, found bool, err error) {
	o, found, err := WALOwner(fsys, walDir, name)
	if err != nil || !found {
		return false, found, err
	}
	return o.Owns(epoch, nonce), true, nil
}

// QuarantineStaleWAL sets aside the WAL that volume name has under walDir
// when another owner has taken the volume over since it was written: its
// segments move to <walDir>/<name>/stale-<unix nanoseconds>/, named
// <shard>-<segment>, exactly as a writable Open moves a stale WAL, so that
// no open replays them and nothing is deleted. It returns that directory,
// or "" when there was nothing to move: no WAL directory or no segments, or
// a WAL that still belongs to the volume's current owner (which it leaves
// in place). It fails with ErrInUse while the volume is open in walDir, and
// with ErrNotFound when the volume is gone from the store (its WAL is then
// no one's; see DeleteWAL).
func QuarantineStaleWAL(ctx context.Context, store backend.Store, fsys vfs.FS, walDir, name string) (string, error) {
	if err := validName(name); err != nil {
		return "", err
	}
	if fsys == nil {
		fsys = vfs.Default
	}
	wdir := filepath.Join(walDir, name)
	if isDir, err := fsys.Stat(wdir); errors.Is(err, fs.ErrNotExist) {
		return "", nil
	} else if err != nil {
		return "", err
	} else if !isDir {
		return "", fmt.Errorf("%w: WAL directory %s is not a directory", ErrCorrupt, wdir)
	}
	lock, err := fsys.TryLock(filepath.Join(wdir, ".lock"))
	if err != nil {
		if errors.Is(err, vfs.ErrLocked) {
			return "", fmt.Errorf("%w: %s is open in another process on this node (WAL %s)", ErrInUse, name, wdir)
		}
		return "", err
	}
	defer lock.Close()
	epoch, nonce, err := Owner(ctx, store, name)
	if err != nil {
		return "", err
	}
	own, _, err := readOwner(fsys, wdir)
	if err != nil {
		return "", err
	}
	if own.owns(epoch, nonce) {
		return "", nil
	}
	type seg struct{ shard, path string }
	var segs []seg
	for i := 0; i < nShards; i++ {
		shard := fmt.Sprintf("%02d", i)
		names, err := fsys.ReadDir(filepath.Join(wdir, shard))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return "", err
		}
		for _, n := range names {
			if g, ok := strings.CutSuffix(n, ".wal"); ok {
				if _, err := strconv.ParseUint(g, 16, 64); err == nil {
					segs = append(segs, seg{shard, filepath.Join(wdir, shard, n)})
				}
			}
		}
	}
	if len(segs) == 0 {
		return "", nil
	}
	dir := filepath.Join(wdir, fmt.Sprintf("stale-%d", time.Now().UnixNano()))
	if err := vfs.MkdirAllDurable(fsys, dir); err != nil {
		return "", err
	}
	synced := map[string]bool{}
	for _, s := range segs {
		if err := fsys.Rename(s.path, filepath.Join(dir, s.shard+"-"+filepath.Base(s.path))); err != nil {
			return "", err
		}
		synced[s.shard] = true
	}
	for shard := range synced {
		if err := vfs.SyncDir(fsys, filepath.Join(wdir, shard)); err != nil {
			return "", err
		}
	}
	if err := vfs.SyncDir(fsys, dir); err != nil {
		return "", err
	}
	return dir, nil
}

// DefaultStaleRetention is how long a stale WAL set aside (stale-*) is kept
// for inspection when Options.StaleRetention is zero.
const DefaultStaleRetention = 7 * 24 * time.Hour

// PruneStaleWALs removes the stale WALs set aside in walDir/name (the
// stale-<unix nanoseconds> directories: writes another owner's newer
// committed epoch fenced, never to be replayed) that were set aside more
// than retention ago, and returns the directories it removed. A negative
// retention keeps them all.
func PruneStaleWALs(fsys vfs.FS, walDir, name string, retention time.Duration, now time.Time) ([]string, error) {
	if err := validName(name); err != nil {
		return nil, err
	}
	if fsys == nil {
		fsys = vfs.Default
	}
	if retention < 0 {
		return nil, nil
	}
	wdir := filepath.Join(walDir, name)
	names, err := fsys.ReadDir(wdir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var removed []string
	for _, n := range names {
		ts, ok := strings.CutPrefix(n, "stale-")
		if !ok {
			continue
		}
		ns, err := strconv.ParseInt(ts, 10, 64)
		if err != nil || now.Sub(time.Unix(0, ns)) < retention {
			continue
		}
		dir := filepath.Join(wdir, n)
		if err := fsys.RemoveAll(dir); err != nil {
			return removed, err
		}
		removed = append(removed, dir)
	}
	if len(removed) > 0 {
		if err := vfs.SyncDir(fsys, wdir); err != nil {
			return removed, err
		}
	}
	return removed, nil
}
