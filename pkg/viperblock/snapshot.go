package viperblock

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/blockmap"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/manifest"
)

// Snapshots and clones.
//
// A snapshot is the volume's committed manifest, frozen under
// <volume>/snapshots/<name> (flag FlagSnapshot). It copies no data: it pins
// the chunks its map references. A clone is a new volume whose manifest
// starts as a copy of a snapshot's map, with the snapshot's volume (and that
// volume's own ancestors) in its volume table, so a block of a clone of a
// clone of any depth resolves in one map lookup. The clone records its
// dependency in a marker object <volume>/deps/<snapshot>/<clone>.
//
// Deleting a snapshot that clones depend on, or a volume that has snapshots,
// leaves a tombstone (FlagDeleted): hidden, but keeping the data the
// dependants use. The tombstone goes when the last dependant does.
//
// Who may write a snapshot: the volume's owner (Volume.Snapshot), or anyone
// (CreateSnapshot) who verifies that the manifest did not change between
// reading it and writing the snapshot. The owner deletes a chunk its map
// dropped only after listing the snapshots following the commit that dropped
// it; a concurrent snapshot writer either is in that list, or sees the
// commit and retries. So no snapshot ever pins a deleted chunk.
//
// A snapshot of a volume open on a node should include what the node has
// written but not yet drained: CreateSnapshot asks the owner to drain first
// (see request.go). If the owner does not answer in time (it may be dead),
// the snapshot holds the last committed state.

// DefaultMaxSnapshots is the most snapshot objects a volume keeps when
// SnapshotOptions.MaxSnapshots (or Options.MaxSnapshots) is zero. Every
// drain that drops chunks reads all of them, so their number bounds the
// cost of a drain.
const DefaultMaxSnapshots = 128

// ErrTooManySnapshots: a new snapshot would take the volume past its limit
// of snapshot objects. Snapshots deleted but kept for their clones, and the
// internal snapshots behind clones of the volume, count too.
var ErrTooManySnapshots = errors.New("viperblock: too many snapshots of the volume")

// checkSnapshotLimit fails with ErrTooManySnapshots when vol already holds
// max snapshot objects (max < 0: no limit; 0: DefaultMaxSnapshots) and snap
// is not one of them (taking an existing snapshot again is idempotent).
// Two snapshots taken at once may both pass: the limit is exceeded by at
// most the number of concurrent callers.
func checkSnapshotLimit(ctx context.Context, store backend.Store, vol, snap string, max int) error {
	if max < 0 {
		return nil
	}
	if max == 0 {
		max = DefaultMaxSnapshots
	}
	keys, err := store.List(ctx, vol+"/snapshots/")
	if err != nil {
		return err
	}
	if len(keys) < max {
		return nil
	}
	for _, k := range keys {
		if k == snapKey(vol, snap) {
			return nil
		}
	}
	return fmt.Errorf("%w: %s has %d snapshots (counting those deleted but kept for clones, and those behind clones), the limit is %d; delete some first",
		ErrTooManySnapshots, vol, len(keys), max)
}

// SnapshotInfo describes a snapshot.
type SnapshotInfo struct {
	Volume       string
	Name         string
	Size         int64
	Created      time.Time
	WrittenBytes int64
	Internal     bool // made implicitly to clone a volume
	Deleted      bool // deleted, kept while clones depend on it
	// Encrypted and KEKID: as Info's; a clone of the snapshot inherits
	// them.
	Encrypted bool
	KEKID     string `json:",omitempty"`
}

func snapKey(vol, snap string) string       { return vol + "/snapshots/" + snap }
func depPrefix(vol, snap string) string     { return vol + "/deps/" + snap + "/" }
func depKey(vol, snap, clone string) string { return depPrefix(vol, snap) + clone }
func parentRef(vol, snap string) string     { return vol + "@" + snap }
func splitParent(p string) (string, string) { a, b, _ := strings.Cut(p, "@"); return a, b }
func snapInfo(m *manifest.Manifest) SnapshotInfo {
	inf := SnapshotInfo{Volume: m.Name, Name: m.Label, Size: m.Size, Created: time.Unix(0, m.Committed),
		Internal: m.Flags&manifest.FlagInternal != 0, Deleted: m.Flags&manifest.FlagDeleted != 0, Encrypted: m.Encrypted()}
	if k, ok := m.Key(m.WriteKey); ok {
		inf.KEKID = k.KEKID
	}
	for _, e := range m.Extents {
		inf.WrittenBytes += int64(e.Count) * BlockSize
	}
	return inf
}

// readSnapshot loads a snapshot object, tombstoned or not.
func readSnapshot(ctx context.Context, store backend.Store, vol, snap string) (*manifest.Manifest, backend.Version, error) {
	if err := validName(vol); err != nil {
		return nil, "", err
	}
	if err := validName(snap); err != nil {
		return nil, "", err
	}
	b, ver, err := store.Get(ctx, snapKey(vol, snap))
	if err != nil {
		if errors.Is(err, backend.ErrNotFound) {
			return nil, "", fmt.Errorf("%w: snapshot %s", ErrNotFound, parentRef(vol, snap))
		}
		return nil, "", err
	}
	m, err := manifest.Decode(b)
	if err != nil {
		return nil, "", fmt.Errorf("%w: snapshot %s: %v", ErrCorrupt, parentRef(vol, snap), err)
	}
	if m.Name != vol || m.Label != snap || m.Flags&manifest.FlagSnapshot == 0 {
		return nil, "", fmt.Errorf("%w: object %s holds %q/%q", ErrCorrupt, snapKey(vol, snap), m.Name, m.Label)
	}
	return m, ver, nil
}

// freeze turns a committed volume manifest into a snapshot manifest.
func freeze(m *manifest.Manifest, snap string, internal bool) *manifest.Manifest {
	s := *m
	s.Flags = manifest.FlagSnapshot
	if internal {
		s.Flags |= manifest.FlagInternal
	}
	s.Label = snap
	s.Committed = time.Now().UnixNano()
	return &s
}

// putSnapshot writes a snapshot object if the name is free. If a live
// snapshot of that name exists it is returned (idempotent create).
func putSnapshot(ctx context.Context, store backend.Store, s *manifest.Manifest) (SnapshotInfo, bool, error) {
	_, err := store.PutIf(ctx, snapKey(s.Name, s.Label), manifest.Encode(s), "")
	if err == nil {
		return snapInfo(s), true, nil
	}
	if !errors.Is(err, backend.ErrPrecondition) {
		return SnapshotInfo{}, false, err
	}
	old, _, err := readSnapshot(ctx, store, s.Name, s.Label)
	if err != nil {
		return SnapshotInfo{}, false, err
	}
	if old.Flags&manifest.FlagDeleted != 0 {
		return SnapshotInfo{}, false, fmt.Errorf("%w: snapshot %s was deleted and is kept for its clones; choose another name", ErrExists, parentRef(s.Name, s.Label))
	}
	return snapInfo(old), false, nil
}

// Snapshot drains the volume and freezes its state under name. It is
// idempotent: an existing snapshot of that name is returned as it is.
func (v *Volume) Snapshot(ctx context.Context, name string) (SnapshotInfo, error) {
	if err := validName(name); err != nil {
		return SnapshotInfo{}, err
	}
	if v.opts.ReadOnly {
		return CreateSnapshot(ctx, v.store, v.name, name, SnapshotOptions{})
	}
	if err := v.checkWritable(); err != nil {
		return SnapshotInfo{}, err
	}
	if err := checkSnapshotLimit(ctx, v.store, v.name, name, v.opts.MaxSnapshots); err != nil {
		return SnapshotInfo{}, err
	}
	if err := v.drain(ctx); err != nil {
		return SnapshotInfo{}, err
	}
	v.drainMu.Lock()
	defer v.drainMu.Unlock()
	if err := v.crashPoint("snapshot.before-put"); err != nil {
		return SnapshotInfo{}, err
	}
	inf, _, err := putSnapshot(ctx, v.store, freeze(v.man, name, false))
	return inf, err
}

// SnapshotOptions tune CreateSnapshot.
type SnapshotOptions struct {
	// OwnerWait is how long to wait for the volume's owner to drain before
	// snapshotting the last committed state instead (default 30 s).
	OwnerWait time.Duration
	// Internal marks a snapshot made implicitly to clone a volume.
	Internal bool
	// MaxSnapshots is the most snapshot objects the volume may hold
	// (0: DefaultMaxSnapshots; negative: no limit); a new one beyond it
	// fails with ErrTooManySnapshots.
	MaxSnapshots int
	// Logf receives progress notes (may be nil).
	Logf func(format string, args ...any)
}

// CreateSnapshot snapshots a volume from outside its owner (a controller).
// If the volume is open on a node, the owner is asked to drain first so the
// snapshot holds everything written before the call.
func CreateSnapshot(ctx context.Context, store backend.Store, vol, snap string, opts SnapshotOptions) (SnapshotInfo, error) {
	if err := validName(snap); err != nil {
		return SnapshotInfo{}, err
	}
	if opts.OwnerWait == 0 {
		opts.OwnerWait = 30 * time.Second
	}
	m, _, err := readLiveManifest(ctx, store, vol)
	if err != nil {
		return SnapshotInfo{}, err
	}
	if old, _, err := readSnapshot(ctx, store, vol, snap); err == nil {
		if old.Flags&manifest.FlagDeleted != 0 {
			return SnapshotInfo{}, fmt.Errorf("%w: snapshot %s was deleted and is kept for its clones", ErrExists, parentRef(vol, snap))
		}
		return snapInfo(old), nil
	}
	if err := checkSnapshotLimit(ctx, store, vol, snap, opts.MaxSnapshots); err != nil {
		return SnapshotInfo{}, err
	}
	if m.Flags&manifest.FlagOpen != 0 {
		if err := askOwner(ctx, store, vol, 0, opts.OwnerWait, opts.Logf); err != nil {
			return SnapshotInfo{}, err
		}
	}
	for attempt := 0; ; attempt++ {
		m, ver, err := readLiveManifest(ctx, store, vol)
		if err != nil {
			return SnapshotInfo{}, err
		}
		inf, created, err := putSnapshot(ctx, store, freeze(m, snap, opts.Internal))
		if err != nil || !created {
			return inf, err
		}
		_, now, err := store.Get(ctx, manifestKey(vol))
		if err == nil && now == ver {
			return inf, nil
		}
		// The owner committed meanwhile and may have deleted a chunk our
		// copy pins: take the snapshot again from the newer state.
		if derr := store.Delete(ctx, snapKey(vol, snap)); derr != nil {
			return SnapshotInfo{}, derr
		}
		if err != nil {
			return SnapshotInfo{}, err
		}
		if attempt >= 20 {
			return SnapshotInfo{}, fmt.Errorf("viperblock: snapshot %s: the volume kept changing; try again", parentRef(vol, snap))
		}
	}
}

// readLiveManifest reads a volume's manifest; a tombstone is ErrNotFound.
func readLiveManifest(ctx context.Context, store backend.Store, vol string) (*manifest.Manifest, backend.Version, error) {
	m, ver, err := readManifest(ctx, store, vol)
	if err != nil {
		return nil, "", err
	}
	if m.Flags&manifest.FlagDeleted != 0 {
		return nil, "", fmt.Errorf("%w: %s (deleted)", ErrNotFound, vol)
	}
	return m, ver, nil
}

// listSnapshotObjects returns every snapshot object of a volume, tombstones
// included, sorted by name.
func listSnapshotObjects(ctx context.Context, store backend.Store, vol string) ([]*manifest.Manifest, error) {
	keys, err := store.List(ctx, vol+"/snapshots/")
	if err != nil {
		return nil, err
	}
	var out []*manifest.Manifest
	for _, k := range keys {
		name := strings.TrimPrefix(k, vol+"/snapshots/")
		m, _, err := readSnapshot(ctx, store, vol, name)
		if errors.Is(err, ErrNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Label < out[j].Label })
	return out, nil
}

// ListSnapshots lists a volume's snapshots (not deleted, not internal).
func ListSnapshots(ctx context.Context, store backend.Store, vol string) ([]SnapshotInfo, error) {
	if err := validName(vol); err != nil {
		return nil, err
	}
	objs, err := listSnapshotObjects(ctx, store, vol)
	if err != nil {
		return nil, err
	}
	var out []SnapshotInfo
	for _, m := range objs {
		if inf := snapInfo(m); !inf.Deleted && !inf.Internal {
			out = append(out, inf)
		}
	}
	return out, nil
}

// InspectSnapshot describes one snapshot.
func InspectSnapshot(ctx context.Context, store backend.Store, vol, snap string) (SnapshotInfo, error) {
	m, _, err := readSnapshot(ctx, store, vol, snap)
	if err != nil {
		return SnapshotInfo{}, err
	}
	if m.Flags&manifest.FlagDeleted != 0 {
		return SnapshotInfo{}, fmt.Errorf("%w: snapshot %s (deleted)", ErrNotFound, parentRef(vol, snap))
	}
	return snapInfo(m), nil
}

// snapshotChunks returns the ids of the volume's own chunks that its
// snapshots (tombstones included) reference.
func snapshotChunks(ctx context.Context, store backend.Store, vol string) (map[uint64]bool, error) {
	objs, err := listSnapshotObjects(ctx, store, vol)
	if err != nil {
		return nil, err
	}
	pinned := map[uint64]bool{}
	for _, m := range objs {
		for _, c := range m.Chunks {
			if c.Vol == 0 {
				pinned[c.ID] = true
			}
		}
	}
	return pinned, nil
}

// Dependants lists the clones made from a volume's snapshot.
func Dependants(ctx context.Context, store backend.Store, vol, snap string) ([]string, error) {
	keys, err := store.List(ctx, depPrefix(vol, snap))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, k := range keys {
		clone := strings.TrimPrefix(k, depPrefix(vol, snap))
		// A marker is written before its clone; a crash between the two
		// leaves a marker without a clone, which does not count.
		m, _, err := readManifest(ctx, store, clone)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if m.Parent == parentRef(vol, snap) {
			out = append(out, clone)
		}
	}
	return out, nil
}

// Clone creates volume dst from snapshot src@snap, sharing its data: only
// blocks dst writes are stored for dst. size 0 keeps the snapshot's size; a
// larger size grows the clone. Idempotent for the same source.
func Clone(ctx context.Context, store backend.Store, src, snap, dst string, size int64) error {
	if err := validName(dst); err != nil {
		return err
	}
	s, _, err := readSnapshot(ctx, store, src, snap)
	if err != nil {
		return err
	}
	if s.Flags&manifest.FlagDeleted != 0 {
		return fmt.Errorf("%w: snapshot %s (deleted)", ErrNotFound, parentRef(src, snap))
	}
	if size == 0 {
		size = s.Size
	}
	size = roundSize(size)
	if size < s.Size || size > 1<<50 {
		return fmt.Errorf("%w: clone size %d is smaller than the snapshot's %d bytes or over 1 PiB", ErrInvalidArg, size, s.Size)
	}
	if old, _, err := readManifest(ctx, store, dst); err == nil {
		if old.Parent == parentRef(src, snap) && old.Flags&manifest.FlagDeleted == 0 {
			return nil
		}
		return fmt.Errorf("%w: %s", ErrExists, dst)
	} else if !errors.Is(err, ErrNotFound) {
		return err
	}
	// The clone's volume table: [dst, src, src's table...]. The snapshot's
	// index i becomes i+1.
	// It inherits the snapshot's compression and key table (so it reads
	// the chunks it shares with its ancestors); its first writable open
	// gives it a data key of its own for its writes (see ownKey).
	c := &manifest.Manifest{Name: dst, Size: size, Parent: parentRef(src, snap), Committed: time.Now().UnixNano(),
		Refs: append([]string{src}, s.Refs...), Compression: s.Compression, WriteKey: s.WriteKey, Keys: slices.Clone(s.Keys)}
	for _, r := range c.Refs {
		if r == dst {
			return fmt.Errorf("%w: %s cannot be a clone of itself", ErrInvalidArg, dst)
		}
	}
	c.Extents = make([]blockmap.Extent, len(s.Extents))
	for i, e := range s.Extents {
		e.Vol++
		c.Extents[i] = e
	}
	c.Chunks = make([]manifest.Chunk, len(s.Chunks))
	for i, ch := range s.Chunks {
		ch.Vol++
		c.Chunks[i] = ch
	}
	if err := store.Put(ctx, depKey(src, snap, dst), nil); err != nil {
		return err
	}
	if _, err := store.PutIf(ctx, manifestKey(dst), manifest.Encode(c), ""); err != nil {
		if errors.Is(err, backend.ErrPrecondition) {
			return fmt.Errorf("%w: %s", ErrExists, dst)
		}
		return err
	}
	return nil
}

// CloneVolume creates dst from the current state of volume src, through an
// internal snapshot that goes away with the last clone that uses it.
func CloneVolume(ctx context.Context, store backend.Store, src, dst string, size int64, opts SnapshotOptions) error {
	snap := "clone-" + dst
	if len(snap) > 128 {
		snap = snap[:128]
	}
	if err := validName(dst); err != nil {
		return err
	}
	if old, _, err := readManifest(ctx, store, dst); err == nil {
		if old.Parent == parentRef(src, snap) && old.Flags&manifest.FlagDeleted == 0 {
			return DeleteSnapshot(ctx, store, src, snap) // finish a crashed earlier call
		}
		return fmt.Errorf("%w: %s", ErrExists, dst)
	} else if !errors.Is(err, ErrNotFound) {
		return err
	}
	opts.Internal = true
	if _, err := CreateSnapshot(ctx, store, src, snap, opts); err != nil {
		return err
	}
	if err := Clone(ctx, store, src, snap, dst, size); err != nil {
		return err
	}
	// Tombstone it now: it lives exactly as long as its clone.
	return DeleteSnapshot(ctx, store, src, snap)
}

// DeleteSnapshot deletes a snapshot. If clones depend on it, it is kept as a
// tombstone until they are gone. Deleting a missing snapshot is ErrNotFound.
func DeleteSnapshot(ctx context.Context, store backend.Store, vol, snap string) error {
	m, ver, err := readSnapshot(ctx, store, vol, snap)
	if err != nil {
		return err
	}
	deps, err := Dependants(ctx, store, vol, snap)
	if err != nil {
		return err
	}
	if len(deps) > 0 {
		if m.Flags&manifest.FlagDeleted != 0 {
			if m.Flags&manifest.FlagInternal != 0 {
				return nil
			}
			return fmt.Errorf("%w: snapshot %s (deleted)", ErrNotFound, parentRef(vol, snap))
		}
		m.Flags |= manifest.FlagDeleted
		if _, err := store.PutIf(ctx, snapKey(vol, snap), manifest.Encode(m), ver); err != nil {
			return err
		}
		return nil
	}
	if err := store.Delete(ctx, snapKey(vol, snap)); err != nil {
		return err
	}
	return purgeIfUnused(ctx, store, vol)
}

// purgeIfUnused reclaims what a volume no longer needs after one of its
// snapshots went: a tombstoned volume with no snapshots left is removed
// entirely (and then its own parent is reconsidered); otherwise its
// unreferenced chunks are collected.
func purgeIfUnused(ctx context.Context, store backend.Store, vol string) error {
	m, _, err := readManifest(ctx, store, vol)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if m.Flags&manifest.FlagDeleted == 0 {
		_, err := collectGarbage(ctx, store, vol)
		return err
	}
	objs, err := listSnapshotObjects(ctx, store, vol)
	if err != nil {
		return err
	}
	if len(objs) > 0 {
		_, err := collectGarbage(ctx, store, vol)
		return err
	}
	return removeVolume(ctx, store, m)
}

// removeVolume deletes everything a tombstoned volume stores, its manifest
// last (so a crash part way leaves the tombstone to finish from), then its
// dependency on its parent, then lets the parent reclaim what only this
// volume used.
func removeVolume(ctx context.Context, store backend.Store, m *manifest.Manifest) error {
	vol := m.Name
	keys, err := store.List(ctx, vol+"/")
	if err != nil {
		return err
	}
	for _, k := range keys {
		if k == manifestKey(vol) {
			continue
		}
		if err := store.Delete(ctx, k); err != nil {
			return fmt.Errorf("viperblock: delete %s: %w", vol, err)
		}
	}
	if err := store.Delete(ctx, manifestKey(vol)); err != nil {
		return err
	}
	if m.Parent == "" {
		return nil
	}
	pv, ps := splitParent(m.Parent)
	if err := store.Delete(ctx, depKey(pv, ps, vol)); err != nil {
		return err
	}
	// The parent snapshot may now be an unused tombstone.
	s, _, err := readSnapshot(ctx, store, pv, ps)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if s.Flags&manifest.FlagDeleted == 0 {
		return nil
	}
	if deps, err := Dependants(ctx, store, pv, ps); err != nil || len(deps) > 0 {
		return err
	}
	if err := store.Delete(ctx, snapKey(pv, ps)); err != nil {
		return err
	}
	return purgeIfUnused(ctx, store, pv)
}

// ChangedBlocks lists the block ranges whose content may differ between two
// snapshots of one volume (a block counts as changed if it is stored in a
// different place; GC moving a block can report it although its bytes are
// equal). Ranges are [start, start+count) in blocks.
func ChangedBlocks(ctx context.Context, store backend.Store, vol, snapA, snapB string) ([][2]uint64, error) {
	a, _, err := readSnapshot(ctx, store, vol, snapA)
	if err != nil {
		return nil, err
	}
	b, _, err := readSnapshot(ctx, store, vol, snapB)
	if err != nil {
		return nil, err
	}
	if (a.Flags|b.Flags)&manifest.FlagDeleted != 0 {
		return nil, fmt.Errorf("%w: snapshot %s or %s (deleted)", ErrNotFound, parentRef(vol, snapA), parentRef(vol, snapB))
	}
	type loc struct {
		vol   string
		chunk uint64
		off   uint32
		ok    bool
	}
	at := func(m *manifest.Manifest, ext []blockmap.Extent, i int, blk uint64) loc {
		if i < len(ext) && ext[i].Start <= blk && blk < ext[i].End() {
			e := ext[i]
			return loc{m.VolumeName(e.Vol), e.Chunk, e.Off + uint32(blk-e.Start), true}
		}
		return loc{}
	}
	// Walk both maps at every extent boundary.
	var bounds []uint64
	for _, e := range a.Extents {
		bounds = append(bounds, e.Start, e.End())
	}
	for _, e := range b.Extents {
		bounds = append(bounds, e.Start, e.End())
	}
	end := uint64(max(a.Size, b.Size) / BlockSize)
	bounds = append(bounds, 0, end)
	sort.Slice(bounds, func(i, j int) bool { return bounds[i] < bounds[j] })
	var out [][2]uint64
	ia, ib := 0, 0
	for k := 0; k+1 < len(bounds); k++ {
		s, e := bounds[k], bounds[k+1]
		if s == e || s >= end {
			continue
		}
		for ia < len(a.Extents) && a.Extents[ia].End() <= s {
			ia++
		}
		for ib < len(b.Extents) && b.Extents[ib].End() <= s {
			ib++
		}
		la, lb := at(a, a.Extents, ia, s), at(b, b.Extents, ib, s)
		if la != lb {
			if n := len(out); n > 0 && out[n-1][0]+out[n-1][1] == s {
				out[n-1][1] += e - s
			} else {
				out = append(out, [2]uint64{s, e - s})
			}
		}
	}
	return out, nil
}
