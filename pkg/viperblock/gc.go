package viperblock

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/manifest"
)

// Space reclaim.
//
// Chunks are immutable. A chunk of volume V may be referenced by V's
// current map and by V's snapshots (tombstones included); clones reference
// V's chunks only through a snapshot of V, which stays as long as they do.
// So a chunk of V that neither V's manifest nor any of V's snapshots
// references is garbage, with one exception: a chunk the current owner has
// uploaded but not yet committed. Chunk ids carry the epoch of the owner
// that wrote them (id >> 40), so an offline collector deletes an
// unreferenced chunk only if an older epoch wrote it, or the volume is not
// open.
//
// Compaction (the owner's, see compact.go) rewrites the live blocks of
// sparse chunks into new chunks and commits a map without the old ones.

// GCReport says what a collection did.
type GCReport struct {
	ChunksDeleted   int // unreferenced chunks deleted
	ChunksRewritten int // sparse chunks whose live blocks were moved
	BlocksMoved     int // blocks copied into new chunks
}

// chunkEpoch is the epoch of the owner that wrote a chunk.
func chunkEpoch(id uint64) uint64 { return id >> 40 }

// collectGarbage deletes a volume's unreferenced chunks (see above). It is
// safe to run while the volume is open on a node.
func collectGarbage(ctx context.Context, store backend.Store, vol string) (GCReport, error) {
	return collect(ctx, store, vol, 0)
}

// collect is collectGarbage; ownerEpoch != 0 means the caller is the
// volume's owner at that epoch and holds its drainMu, so no drain is in
// progress and its own unreferenced chunks are garbage too.
func collect(ctx context.Context, store backend.Store, vol string, ownerEpoch uint64) (GCReport, error) {
	var rep GCReport
	m, _, err := readManifest(ctx, store, vol)
	if err != nil {
		return rep, err
	}
	if err := dropStaleInternalSnapshots(ctx, store, vol); err != nil {
		return rep, err
	}
	used := map[uint64]bool{}
	if m.Flags&manifest.FlagDeleted == 0 {
		for _, c := range m.Chunks {
			if c.Vol == 0 {
				used[c.ID] = true
			}
		}
	}
	pinned, err := snapshotChunks(ctx, store, vol)
	if err != nil {
		return rep, err
	}
	keys, err := store.List(ctx, vol+"/chunks/")
	if err != nil {
		return rep, err
	}
	open := m.Flags&manifest.FlagOpen != 0
	for _, k := range keys {
		id, err := strconv.ParseUint(strings.TrimPrefix(k, vol+"/chunks/"), 16, 64)
		if err != nil || id == 0 {
			continue // not a chunk this engine wrote; leave it
		}
		if used[id] || pinned[id] {
			continue
		}
		if e := chunkEpoch(id); e > m.Epoch || (e == m.Epoch && open && ownerEpoch != m.Epoch) {
			continue // may belong to a drain in progress
		}
		if err := store.Delete(ctx, k); err != nil {
			return rep, err
		}
		rep.ChunksDeleted++
	}
	return rep, nil
}

// internalSnapshotGrace is how old an internal snapshot without clones must
// be before GC deletes it: CloneVolume creates it moments before the clone.
var internalSnapshotGrace = 10 * time.Minute

// dropStaleInternalSnapshots deletes internal snapshots that no clone uses
// and that are older than internalSnapshotGrace: leftovers of a CloneVolume
// that crashed between making the snapshot and the clone.
func dropStaleInternalSnapshots(ctx context.Context, store backend.Store, vol string) error {
	objs, err := listSnapshotObjects(ctx, store, vol)
	if err != nil {
		return err
	}
	for _, s := range objs {
		if s.Flags&manifest.FlagInternal == 0 || s.Flags&manifest.FlagDeleted != 0 || time.Since(time.Unix(0, s.Committed)) < internalSnapshotGrace {
			continue
		}
		deps, err := Dependants(ctx, store, vol, s.Label)
		if err != nil {
			return err
		}
		if len(deps) == 0 {
			if err := store.Delete(ctx, snapKey(vol, s.Label)); err != nil {
				return err
			}
		}
	}
	return nil
}

// GC reclaims space of a volume that is not open here: it deletes the
// volume's unreferenced chunks. (An open volume compacts with Volume.GC.)
func GC(ctx context.Context, store backend.Store, vol string) (GCReport, error) {
	if err := validName(vol); err != nil {
		return GCReport{}, err
	}
	return collectGarbage(ctx, store, vol)
}

// GC compacts the volume now and deletes every chunk of it that nothing
// references: it rewrites the live blocks of every chunk below
// CompactionOptions.ChunkLiveRatio that no snapshot pins (see compact.go),
// then, holding the drain lock so no upload is under way, deletes the
// volume's unreferenced chunks of every epoch, its own included.
func (v *Volume) GC(ctx context.Context) (GCReport, error) {
	if err := v.checkWritable(); err != nil {
		return GCReport{}, err
	}
	if err := v.drain(ctx); err != nil {
		return GCReport{}, err
	}
	total, err := v.compactAll(ctx, true)
	if err != nil {
		return total, err
	}
	v.comp.mu.Lock()
	v.drainMu.Lock()
	rep, err := collect(ctx, v.store, v.name, v.epoch)
	v.drainMu.Unlock()
	v.comp.mu.Unlock()
	total.ChunksDeleted += rep.ChunksDeleted
	v.stats.m.gcDone(err)
	v.stats.gcChunksDeleted.Add(uint64(rep.ChunksDeleted))
	return total, err
}
