package viperblock

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/blockmap"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/chunk"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/manifest"
)

// Rebuilding a manifest from chunks.
//
// Every chunk names its volume and id in its header and lists, for each of
// its blocks, the volume block and the sequence number of the write that
// produced it (package chunk). Rebuild reads the headers and indexes of a
// volume's chunks (two ranged reads each, no block data) and maps every
// block to its newest copy, ordered by (epoch, sequence number): the epoch
// is the chunk id's top 24 bits, and an owner of a later epoch took the
// volume over after every write of an earlier one it can see (a stale
// owner's late writes lose to it), while within an epoch sequence numbers
// order writes, and compaction copies a block with the sequence number of
// the write that produced it. Ties (the same write copied twice) go to the
// later chunk.
//
// A clone's blocks it never wrote live in its parent snapshot: the parent
// is found through the dependency marker <volume>/deps/<snapshot>/<clone>
// (or given), and its snapshot's map is the base the clone's own chunks
// overlay.
//
// What a rebuild cannot recover, because no chunk records it:
//   - trims: a block trimmed after its last write comes back with that
//     write's content, if the chunk holding it still exists;
//   - which writes were committed: chunks uploaded by a drain that never
//     committed (a crash, or an owner fenced before its commit) count as
//     written, so a block may show a newer content than the lost manifest
//     had (never an older one: what the manifest mapped is in its chunks);
//   - the size beyond the last written block (give it), the durability
//     class (the store log's presence implies "store"), whether the volume
//     was deleted (a damaged tombstone comes back as a live volume);
//   - snapshots: their manifests are separate objects and are left as they
//     are; a damaged snapshot manifest cannot be rebuilt (its instant is
//     not recorded anywhere else).
//
// Rebuild never replaces a manifest that decodes (ErrIntact), keeps a copy
// of a damaged one under <volume>/manifest.broken-<unix ns>, and writes the
// new one by compare-and-swap on the version it read. It refuses a volume
// whose lease a live owner holds (ErrInUse): the lease must be missing,
// released, or unchanged for its duration plus margin. The rebuilt
// manifest carries the highest epoch seen (chunks, lease) and the highest
// sequence number of any chunk, so the next owner's chunk ids and writes
// come after all of them.

// ErrIntact: Rebuild found a manifest that decodes; it replaces none.
var ErrIntact = errors.New("viperblock: the manifest is intact; nothing to rebuild")

// RebuildOptions tune Rebuild.
type RebuildOptions struct {
	// Size is the smallest size of the rebuilt volume (default: up to its
	// last written block, or its parent snapshot's size).
	Size int64
	// Parent names the clone's parent "volume@snapshot" when dependency
	// markers are missing or name several.
	Parent string
	// LeaseWait is how long a held lease must stay unchanged to count as
	// expired (default: its duration plus margin, as a taker waits).
	LeaseWait time.Duration
	// Logf receives progress notes (may be nil).
	Logf func(format string, args ...any)
}

// RebuildReport describes a rebuilt manifest.
type RebuildReport struct {
	Volume       string     `json:"volume"`
	ChunksRead   int        `json:"chunks_read"`
	ChunksUsed   int        `json:"chunks_used"`       // own chunks the new map references
	Skipped      []string   `json:"skipped,omitempty"` // chunk objects left out, and why
	MappedBlocks uint64     `json:"mapped_blocks"`
	Size         int64      `json:"size"`
	Epoch        uint64     `json:"epoch"`
	CommittedSeq uint64     `json:"committed_seq"`
	Parent       string     `json:"parent,omitempty"`
	Durability   Durability `json:"durability"`
	KeptBroken   string     `json:"kept_broken,omitempty"` // where the damaged manifest was copied
}

// rebuildCand is the newest copy of a block found so far.
type rebuildCand struct {
	epoch, seq, id uint64
	off            uint32
}

func (a rebuildCand) newer(b rebuildCand) bool {
	if a.epoch != b.epoch {
		return a.epoch > b.epoch
	}
	if a.seq != b.seq {
		return a.seq > b.seq
	}
	if a.id != b.id {
		return a.id > b.id
	}
	return a.off > b.off
}

// Rebuild writes a new manifest for a volume whose manifest is missing or
// damaged, from its chunks' self-descriptions (see above).
func Rebuild(ctx context.Context, store backend.Store, name string, opts RebuildOptions) (*RebuildReport, error) {
	if err := validName(name); err != nil {
		return nil, err
	}
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	raw, ver, err := store.Get(ctx, manifestKey(name))
	switch {
	case errors.Is(err, backend.ErrNotFound):
		ver = ""
	case err != nil:
		return nil, fmt.Errorf("viperblock: rebuild %s: read manifest: %w", name, err)
	default:
		if m, derr := manifest.Decode(raw); derr == nil && m.Name == name {
			return nil, fmt.Errorf("%w: %s", ErrIntact, name)
		}
	}
	leaseEpoch, err := waitLeaseFree(ctx, store, name, opts.LeaseWait, logf)
	if err != nil {
		return nil, err
	}
	rep := &RebuildReport{Volume: name, Epoch: leaseEpoch, Durability: DurabilityNode}

	// The newest copy of every block in the volume's own chunks.
	keys, err := store.List(ctx, name+"/chunks/")
	if err != nil {
		return nil, fmt.Errorf("viperblock: rebuild %s: list chunks: %w", name, err)
	}
	best := map[uint64]rebuildCand{}
	counts := map[uint64]uint32{}
	for _, k := range keys {
		id, perr := strconv.ParseUint(strings.TrimPrefix(k, name+"/chunks/"), 16, 64)
		if perr != nil || chunkKey(name, id) != k {
			rep.Skipped = append(rep.Skipped, k+": not a chunk key")
			continue
		}
		idx, why, err := readChunkIndex(ctx, store, name, id)
		if err != nil {
			return nil, fmt.Errorf("viperblock: rebuild %s: %w", name, err)
		}
		if why != "" {
			rep.Skipped = append(rep.Skipped, k+": "+why)
			continue
		}
		rep.ChunksRead++
		counts[id] = uint32(len(idx))
		epoch := id >> 40
		rep.Epoch = max(rep.Epoch, epoch)
		for i, e := range idx {
			rep.CommittedSeq = max(rep.CommittedSeq, e.Seq)
			c := rebuildCand{epoch, e.Seq, id, uint32(i)}
			if old, ok := best[e.Block]; !ok || c.newer(old) {
				best[e.Block] = c
			}
		}
	}
	logf("read %d chunks of %s (%d skipped): %d blocks written", rep.ChunksRead, name, len(rep.Skipped), len(best))

	// The base: a clone's parent snapshot.
	m := &manifest.Manifest{Name: name, Epoch: rep.Epoch, SeqHW: rep.CommittedSeq, Committed: time.Now().UnixNano()}
	// An encrypted or compressed volume's settings and key table survive
	// in its snapshots' manifests, if it has any: the newest one's is
	// taken (without it, sealed chunks cannot be read again).
	if snaps, err := listSnapshotObjects(ctx, store, name); err == nil {
		var newest *manifest.Manifest
		for _, s := range snaps {
			if (len(s.Keys) > 0 || s.Compression != 0) && (newest == nil || s.Committed > newest.Committed) {
				newest = s
			}
		}
		if newest != nil {
			m.Compression, m.WriteKey, m.Keys = newest.Compression, newest.WriteKey, newest.Keys
		}
	}
	parent := opts.Parent
	if parent == "" {
		if parent, err = findParent(ctx, store, name); err != nil {
			return nil, err
		}
	}
	var base []blockmap.Extent
	baseBlocks := map[blockmap.ChunkRef]uint32{}
	if parent != "" {
		pv, ps := splitParent(parent)
		s, _, err := readSnapshot(ctx, store, pv, ps)
		if err != nil {
			return nil, fmt.Errorf("viperblock: rebuild %s: parent snapshot %s: %w", name, parent, err)
		}
		m.Parent, m.Size, m.Refs = parent, s.Size, append([]string{pv}, s.Refs...)
		for _, e := range s.Extents {
			e.Vol++
			base = append(base, e)
		}
		for _, c := range s.Chunks {
			baseBlocks[blockmap.ChunkRef{Vol: c.Vol + 1, ID: c.ID}] = c.Blocks
		}
		rep.Parent = parent
		logf("%s is a clone of %s", name, parent)
	}

	// Overlay the volume's own blocks on the base.
	blocks := make([]uint64, 0, len(best))
	for b := range best {
		blocks = append(blocks, b)
	}
	sort.Slice(blocks, func(i, j int) bool { return blocks[i] < blocks[j] })
	var ops []blockmap.Extent
	for _, b := range blocks {
		c := best[b]
		if n := len(ops); n > 0 {
			l := &ops[n-1]
			if l.End() == b && l.Chunk == c.id && l.Off+l.Count == c.off {
				l.Count++
				continue
			}
		}
		ops = append(ops, blockmap.Extent{Start: b, Count: 1, Chunk: c.id, Off: c.off})
	}
	bm := blockmap.New(base).Overlay(ops)
	m.Extents = bm.Extents()
	if n := len(m.Extents); n > 0 {
		m.Size = max(m.Size, int64(m.Extents[n-1].End())*BlockSize)
	}
	m.Size = roundSize(max(m.Size, opts.Size))
	if m.Size <= 0 {
		return nil, fmt.Errorf("%w: %s: no chunk and no parent to rebuild from; give a size to write an empty manifest", ErrNotFound, name)
	}
	if m.Size > 1<<50 {
		return nil, fmt.Errorf("%w: rebuilt size %d is over 1 PiB", ErrInvalidArg, m.Size)
	}
	for ref, live := range bm.LiveBlocks() {
		c := manifest.Chunk{Vol: ref.Vol, ID: ref.ID, Live: live, Blocks: baseBlocks[ref]}
		if ref.Vol == 0 {
			c.Blocks = counts[ref.ID]
			rep.ChunksUsed++
		}
		m.Chunks = append(m.Chunks, c)
	}
	sort.Slice(m.Chunks, func(i, j int) bool {
		a, b := m.Chunks[i], m.Chunks[j]
		return a.Vol < b.Vol || a.Vol == b.Vol && a.ID < b.ID
	})
	rep.MappedBlocks = bm.Blocks()
	rep.Size = m.Size
	if logs, err := store.List(ctx, storeLogPrefix(name)); err != nil {
		return nil, fmt.Errorf("viperblock: rebuild %s: list the store log: %w", name, err)
	} else if len(logs) > 0 {
		m.Flags |= manifest.FlagDurableStore
		rep.Durability = DurabilityStore
	}
	enc := manifest.Encode(m)
	if _, err := manifest.Decode(enc); err != nil {
		return nil, fmt.Errorf("viperblock: rebuild %s: the rebuilt manifest does not verify: %w", name, err)
	}
	if ver != "" {
		rep.KeptBroken = fmt.Sprintf("%s.broken-%d", manifestKey(name), time.Now().UnixNano())
		if err := store.Put(ctx, rep.KeptBroken, raw); err != nil {
			return nil, fmt.Errorf("viperblock: rebuild %s: keep the damaged manifest: %w", name, err)
		}
	}
	if _, err := store.PutIf(ctx, manifestKey(name), enc, ver); err != nil {
		if errors.Is(err, backend.ErrPrecondition) {
			return nil, fmt.Errorf("%w: the manifest of %s changed during the rebuild", ErrInUse, name)
		}
		return nil, fmt.Errorf("viperblock: rebuild %s: write manifest: %w", name, err)
	}
	return rep, nil
}

// readChunkIndex reads a chunk's header and index. A chunk that is gone or
// does not verify is skipped with a reason; only a store failure is an
// error.
func readChunkIndex(ctx context.Context, store backend.Store, vol string, id uint64) ([]chunk.Entry, string, error) {
	key := chunkKey(vol, id)
	hb, err := store.GetRange(ctx, key, 0, chunk.HeaderSize)
	if errors.Is(err, backend.ErrNotFound) {
		return nil, "deleted during the rebuild", nil
	}
	if errors.Is(err, backend.ErrRange) {
		return nil, "shorter than a chunk header", nil
	}
	if err != nil {
		return nil, "", fmt.Errorf("read %s: %w", key, err)
	}
	h, err := chunk.DecodeHeader(hb)
	if err != nil {
		return nil, err.Error(), nil
	}
	if h.ID != id || h.Volume != vol {
		return nil, fmt.Sprintf("header names chunk %016x of volume %q", h.ID, h.Volume), nil
	}
	if h.Version == chunk.Version2 {
		ib, err := store.GetRange(ctx, key, chunk.HeaderSize, chunk.IndexLen2(h.Count, h.ExtentBlocks))
		if errors.Is(err, backend.ErrNotFound) {
			return nil, "deleted during the rebuild", nil
		}
		if errors.Is(err, backend.ErrRange) {
			return nil, "truncated", nil
		}
		if err != nil {
			return nil, "", fmt.Errorf("read %s: %w", key, err)
		}
		ix, err := chunk.DecodeIndex2(ib, h)
		if err != nil {
			return nil, err.Error(), nil
		}
		return ix.Entries, "", nil
	}
	ib, err := store.GetRange(ctx, key, chunk.IndexOffset(h.Count), chunk.IndexLen(h.Count))
	if errors.Is(err, backend.ErrNotFound) {
		return nil, "deleted during the rebuild", nil
	}
	if errors.Is(err, backend.ErrRange) {
		return nil, "truncated", nil
	}
	if err != nil {
		return nil, "", fmt.Errorf("read %s: %w", key, err)
	}
	idx, err := chunk.DecodeIndex(ib, id, h.Count)
	if err != nil {
		return nil, err.Error(), nil
	}
	return idx, "", nil
}

// findParent looks for the dependency marker a clone's creation left under
// its parent: <volume>/deps/<snapshot>/<name>, one listing per volume of
// the store. Markers whose snapshot is gone are ignored; several live ones
// are an error (RebuildOptions.Parent chooses).
func findParent(ctx context.Context, store backend.Store, name string) (string, error) {
	vols, err := backend.ListDirs(ctx, store, "")
	if err != nil {
		return "", fmt.Errorf("viperblock: rebuild %s: list volumes: %w", name, err)
	}
	var found []string
	for _, v := range vols {
		if v == name || validName(v) != nil {
			continue
		}
		keys, err := store.List(ctx, v+"/deps/")
		if err != nil {
			return "", fmt.Errorf("viperblock: rebuild %s: list %s/deps/: %w", name, v, err)
		}
		for _, k := range keys {
			snap, clone, ok := strings.Cut(strings.TrimPrefix(k, v+"/deps/"), "/")
			if !ok || clone != name {
				continue
			}
			if _, _, err := readSnapshot(ctx, store, v, snap); err == nil {
				found = append(found, parentRef(v, snap))
			}
		}
	}
	if len(found) > 1 {
		return "", fmt.Errorf("%w: %s: dependency markers name several parents %v; choose one", ErrInvalidArg, name, found)
	}
	if len(found) == 1 {
		return found[0], nil
	}
	return "", nil
}

// waitLeaseFree returns the epoch of a volume's lease once no live owner
// holds it: missing, released, or unchanged for wait (default the lease's
// duration plus margin). A lease that changes meanwhile is ErrInUse.
func waitLeaseFree(ctx context.Context, store backend.Store, name string, wait time.Duration, logf func(string, ...any)) (uint64, error) {
	b, ver, err := store.Get(ctx, leaseKey(name))
	if errors.Is(err, backend.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("viperblock: rebuild %s: read the lease: %w", name, err)
	}
	rec, derr := decodeLease(b)
	if derr == nil && rec.released {
		return rec.epoch, nil
	}
	d := DefaultLeaseDuration
	if derr == nil {
		d = rec.duration
	}
	if wait <= 0 {
		wait = d + leaseMargin(d)
	}
	logf("the lease of %s is held (epoch %d); waiting %v for it to expire", name, rec.epoch, wait)
	poll := min(max(wait/10, 20*time.Millisecond), time.Second)
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(poll):
		}
		_, now, err := store.Get(ctx, leaseKey(name))
		if err != nil && !errors.Is(err, backend.ErrNotFound) {
			return 0, fmt.Errorf("viperblock: rebuild %s: read the lease: %w", name, err)
		}
		if now != ver {
			return 0, fmt.Errorf("%w: %s: a live owner holds its lease (it changed while we waited); close the volume first", ErrInUse, name)
		}
	}
	return rec.epoch, nil
}
