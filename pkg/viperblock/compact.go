package viperblock

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/blockmap"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/chunk"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/manifest"
)

// Online compaction.
//
// Random overwrites leave chunks partly dead: a drain deletes a chunk only
// once no block of it is live. A writable open therefore runs a compactor
// beside its drains. Every CompactionOptions.Interval it looks at the
// committed map: the volume's own chunks that no snapshot pins hold S
// blocks, of which L are live. When S/L exceeds StoredRatio (or when asked,
// see below), it picks the chunks whose live fraction is below
// ChunkLiveRatio, sparsest first, reads their live blocks, writes them into
// new chunks, and commits a manifest that maps those blocks to the new
// chunks and so no longer references the old ones; then it deletes the old
// chunks that no snapshot pins, exactly as a drain deletes the chunks its
// commit dropped (the snapshot list is read after that commit; see
// snapshot.go). Chunks a snapshot pins are never picked: rewriting them
// would free nothing.
//
// Newer writes win. The compactor reads and uploads without the drain lock,
// so drains go on meanwhile. It then takes the drain lock and, for every
// block it copied, checks that the committed map still maps the block to
// the chunk and slot it copied from; a block a drain has since rewritten or
// trimmed is dropped from the move. Writes newer than the committed map are
// in the WAL and the in-memory block store, which reads consult before the
// map and which the next drain lays over the map, compacted or not. So the
// compactor only ever changes where an unchanged block's bytes live.
//
// Fencing. Before uploading it checks the lease as a drain does
// (mayUpload); its commit is the same compare-and-swap on the manifest
// version as a drain's, so a stale owner's compaction cannot commit, and its
// uploaded chunks (of its own, older epoch) are garbage that a later
// collection removes.
//
// Crash safety. The named crash points compact.before-chunk-put,
// compact.before-chunk-sync, compact.before-commit, compact.after-commit
// and compact.before-delete cover every step. Before the commit the new
// chunks are unreferenced garbage of this epoch; after it the old chunks
// are, until deleted. The compactor sweeps garbage of older epochs (left by
// crashed owners, including crashed compactions) once after open and every
// SweepInterval, the way offline GC does (collectGarbage, safe while the
// volume is open).
//
// Budgets. The compactor spends at most BytesPerSec bytes (read plus
// written) and RequestsPerSec store requests per second on average, so it
// never starves the volume's own I/O.
//
// Requests. `vblock gc` on a volume open on a node does not take the volume
// over: it writes a compaction request (a request object with the compact
// flag, see request.go), which the owner picks up at its next request poll.
// The owner compacts every chunk below ChunkLiveRatio whatever the overall
// ratio, sweeps older epochs' garbage, and answers with a commit that
// records the request id, as for other requests.

// CompactionOptions tune a writable open's background compactor.
type CompactionOptions struct {
	// Disabled turns the background policy off: the volume compacts only
	// when asked (a compaction request, Volume.Compact, Volume.GC).
	Disabled bool
	// Interval is how often the compactor checks its policy (default 2 s).
	Interval time.Duration
	// BytesPerSec bounds the bytes the compactor reads and writes per
	// second, on average (default DefaultCompactBytesPerSec).
	BytesPerSec int64
	// RequestsPerSec bounds its store requests per second, on average
	// (default DefaultCompactRequestsPerSec).
	RequestsPerSec float64
	// ChunkLiveRatio: a chunk whose live fraction is below it is a
	// candidate (default DefaultChunkLiveRatio).
	ChunkLiveRatio float64
	// StoredRatio: compaction runs while the volume's unpinned chunks hold
	// more than this many blocks per live block (default
	// DefaultStoredRatio).
	StoredRatio float64
	// SweepInterval is how often garbage of older epochs is swept; the
	// first sweep runs soon after open (default 1 h).
	SweepInterval time.Duration
}

// Compaction defaults. With uniformly random overwrites a chunk's live
// fraction decays until the compactor picks it, at about the fraction f at
// which S/L = ln(1/f)/(1-f) equals StoredRatio; 1.15 puts f near 0.75 and
// keeps the store within 1.25x of live data with room for chunk headers,
// indexes and the compactor's lag. Holding that under sustained random
// overwrites costs up to about 3 bytes written and 4 read per byte the
// volume writes; the bandwidth budget covers that for some 60 MB/s of
// sustained 4 KiB random overwrites (scripts/bench-space.sh). A smaller
// budget only lets the ratio rise during long bursts: the compactor
// catches up once they end. Snapshots pin the chunks of their moment,
// dead space included, so a volume snapshotted while the compactor lags
// keeps that dead space until the snapshot goes.
const (
	DefaultCompactBytesPerSec    = 256 << 20
	DefaultCompactRequestsPerSec = 100
	DefaultChunkLiveRatio        = 0.85
	DefaultStoredRatio           = 1.15
)

func (o *CompactionOptions) setDefaults() {
	if o.Interval <= 0 {
		o.Interval = 2 * time.Second
	}
	if o.BytesPerSec == 0 {
		o.BytesPerSec = DefaultCompactBytesPerSec
	}
	if o.RequestsPerSec == 0 {
		o.RequestsPerSec = DefaultCompactRequestsPerSec
	}
	if o.ChunkLiveRatio <= 0 || o.ChunkLiveRatio > 1 {
		o.ChunkLiveRatio = DefaultChunkLiveRatio
	}
	if o.StoredRatio < 1 {
		o.StoredRatio = DefaultStoredRatio
	}
	if o.SweepInterval <= 0 {
		o.SweepInterval = time.Hour
	}
}

// compactBatchBlocks bounds the blocks one compaction run moves (and so
// the memory it holds and the work between two commits): 4 chunks.
const compactBatchBlocks = 4 * chunk.MaxBlocks

// budget is a token bucket that may run into debt: take waits until the
// debt is paid back at rate units per second. rate <= 0: unlimited.
type budget struct {
	mu    sync.Mutex
	rate  float64
	avail float64
	last  time.Time
}

func newBudget(rate float64) *budget { return &budget{rate: rate, avail: rate, last: time.Now()} }

// take spends n units, waiting as long as the bucket is in debt.
func (b *budget) take(ctx context.Context, stop <-chan struct{}, n float64) error {
	if b.rate <= 0 {
		return nil
	}
	b.mu.Lock()
	now := time.Now()
	b.avail = min(b.rate, b.avail+now.Sub(b.last).Seconds()*b.rate) // burst: one second's worth
	b.last = now
	b.avail -= n
	wait := time.Duration(0)
	if b.avail < 0 {
		wait = time.Duration(-b.avail / b.rate * float64(time.Second))
	}
	b.mu.Unlock()
	if wait == 0 {
		return nil
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-stop:
		return errCompactStopped
	}
}

var errCompactStopped = errors.New("viperblock: compaction stopped: the volume is closing")

// compactor is the state of a volume's background compactor.
type compactor struct {
	mu      sync.Mutex // one compaction at a time (and none during an owner GC's collection)
	bytes   *budget
	reqs    *budget
	kick    chan struct{}
	want    uint64 // newest compaction request id seen (guarded by drainMu)
	lastPin time.Time
	pinned  map[uint64]bool
	// stored and live are the blocks the volume's own chunks hold and the
	// live blocks among them, as the last policy check counted them
	// (Stats.ChunkBlocksStored and ChunkBlocksLive).
	stored, live atomic.Uint64
}

func (v *Volume) initCompactor() {
	o := &v.opts.Compaction
	v.comp = &compactor{
		bytes: newBudget(float64(o.BytesPerSec)),
		reqs:  newBudget(o.RequestsPerSec),
		kick:  make(chan struct{}, 1),
	}
}

// spend charges the budgets with one request moving n bytes.
func (v *Volume) spend(ctx context.Context, n int64) error {
	if err := v.comp.reqs.take(ctx, v.stop, 1); err != nil {
		return err
	}
	return v.comp.bytes.take(ctx, v.stop, float64(n))
}

// compactLoop runs the compactor until the volume stops.
func (v *Volume) compactLoop() {
	defer v.done.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-v.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	t := time.NewTicker(v.opts.Compaction.Interval)
	defer t.Stop()
	sweepAt := time.Now().Add(v.opts.Compaction.Interval * 5)
	for {
		select {
		case <-v.stop:
			return
		case <-t.C:
		case <-v.comp.kick:
		}
		if v.checkWritable() != nil {
			return
		}
		v.drainMu.Lock()
		want := v.comp.want
		v.drainMu.Unlock()
		force := want != 0
		if !v.opts.Compaction.Disabled || force {
			if _, err := v.compactAll(ctx, force); err != nil {
				if errors.Is(err, ErrFenced) || errors.Is(err, errCrash) || ctx.Err() != nil {
					return
				}
				v.log.Warn("compaction failed; retrying later", "err", err)
				continue
			}
		}
		if force || time.Now().After(sweepAt) {
			sweepAt = time.Now().Add(v.opts.Compaction.SweepInterval)
			if err := v.sweep(ctx); err != nil {
				if errors.Is(err, errCrash) || ctx.Err() != nil {
					return
				}
				v.log.Warn("garbage sweep failed; retrying later", "err", err)
				continue
			}
		}
		if force {
			// Answer the request with the next commit.
			v.drainMu.Lock()
			if v.comp.want == want {
				v.comp.want = 0
			}
			v.request = max(v.request, want)
			v.dirty = true
			v.drainMu.Unlock()
			if err := v.drain(ctx); err != nil {
				if errors.Is(err, ErrFenced) || errors.Is(err, errCrash) || ctx.Err() != nil {
					return
				}
				v.log.Warn("drain answering a compaction request failed; the drain loop retries", "err", err)
				v.kickDrain()
			}
		}
	}
}

// sweep deletes garbage chunks of older epochs (see collect).
func (v *Volume) sweep(ctx context.Context) error {
	v.comp.mu.Lock()
	defer v.comp.mu.Unlock()
	rep, err := collect(ctx, v.store, v.name, 0)
	v.stats.gcChunksDeleted.Add(uint64(rep.ChunksDeleted))
	if rep.ChunksDeleted > 0 {
		v.log.Info("swept garbage chunks of earlier owners", "chunks", rep.ChunksDeleted)
	}
	return err
}

// compactAll compacts until the policy is met (or, forced, until no chunk
// is below ChunkLiveRatio).
func (v *Volume) compactAll(ctx context.Context, force bool) (GCReport, error) {
	var total GCReport
	for {
		rep, more, err := v.compactOnce(ctx, force)
		total.ChunksRewritten += rep.ChunksRewritten
		total.BlocksMoved += rep.BlocksMoved
		total.ChunksDeleted += rep.ChunksDeleted
		if err != nil || !more {
			return total, err
		}
	}
}

// reloc is one block a compaction moves.
type reloc struct {
	block uint64
	src   blockmap.ChunkRef
	off   uint32
	seq   uint64
	data  []byte
}

// compactPlan picks the chunks to compact in the committed map m. It
// reports false if the policy asks for nothing.
func (v *Volume) compactPlan(m *blockmap.Map, sizes map[blockmap.ChunkRef]uint32, pinned map[uint64]bool, force bool) []blockmap.ChunkRef {
	o := &v.opts.Compaction
	live := m.LiveBlocks()
	type cand struct {
		ref  blockmap.ChunkRef
		live uint32
		frac float64
	}
	var stored, used uint64
	var cands []cand
	for ref, n := range sizes {
		if ref.Vol != 0 || pinned[ref.ID] || n == 0 {
			continue
		}
		l := live[ref]
		stored += uint64(n)
		used += uint64(l)
		if f := float64(l) / float64(n); f < o.ChunkLiveRatio {
			cands = append(cands, cand{ref, l, f})
		}
	}
	if pinned == nil { // the whole own-chunk view, pinned chunks included
		v.comp.stored.Store(stored)
		v.comp.live.Store(used)
	}
	if len(cands) == 0 || (!force && float64(stored) <= o.StoredRatio*float64(used)) {
		return nil
	}
	sort.Slice(cands, func(i, j int) bool {
		if cands[i].frac != cands[j].frac {
			return cands[i].frac < cands[j].frac
		}
		return cands[i].ref.ID < cands[j].ref.ID
	})
	var picked []blockmap.ChunkRef
	moved := 0
	for _, c := range cands {
		if moved > 0 && moved+int(c.live) > compactBatchBlocks {
			break
		}
		picked = append(picked, c.ref)
		moved += int(c.live)
		stored -= uint64(sizes[c.ref])
		used -= uint64(c.live)
		// Moved blocks come back in full chunks: stored grows by them.
		if !force && float64(stored+uint64(moved)) <= o.StoredRatio*float64(used+uint64(moved)) {
			break
		}
	}
	return picked
}

// pinnedChunks returns the chunks the volume's snapshots pin, reading the
// snapshot list at most every few seconds (the policy tolerates a stale
// list; deletion never relies on it: deleteChunks reads it afresh).
func (v *Volume) pinnedChunks(ctx context.Context) (map[uint64]bool, error) {
	if v.comp.pinned != nil && time.Since(v.comp.lastPin) < 10*time.Second {
		return v.comp.pinned, nil
	}
	if err := v.spend(ctx, 0); err != nil {
		return nil, err
	}
	p, err := snapshotChunks(ctx, v.store, v.name)
	if err != nil {
		return nil, err
	}
	v.comp.pinned, v.comp.lastPin = p, time.Now()
	return p, nil
}

// compactOnce runs one compaction: pick, copy, commit, delete. more
// reports whether the policy may want another run at once.
func (v *Volume) compactOnce(ctx context.Context, force bool) (rep GCReport, more bool, err error) {
	v.comp.mu.Lock()
	defer v.comp.mu.Unlock()
	if err := v.checkWritable(); err != nil {
		return rep, false, err
	}
	v.drainMu.Lock()
	m := v.bmap.Load()
	sizes := make(map[blockmap.ChunkRef]uint32, len(v.chunkSize))
	for ref, n := range v.chunkSize {
		if ref.Vol == 0 {
			sizes[ref] = n
		}
	}
	v.drainMu.Unlock()
	// Cheap check first: nothing to do if even counting pinned chunks as
	// candidates the policy asks for nothing.
	if v.compactPlan(m, sizes, nil, force) == nil {
		return rep, false, nil
	}
	if force {
		v.comp.pinned = nil // a requested compaction reads the snapshot list afresh
	}
	pinned, err := v.pinnedChunks(ctx)
	if err != nil {
		return rep, false, err
	}
	picked := v.compactPlan(m, sizes, pinned, force)
	if len(picked) == 0 {
		return rep, false, nil
	}
	// The live blocks of the picked chunks, by chunk, in slot order.
	want := make(map[blockmap.ChunkRef][]reloc, len(picked))
	for _, r := range picked {
		want[r] = nil
	}
	for _, e := range m.Extents() {
		if l, ok := want[e.Ref()]; ok {
			for i := uint32(0); i < e.Count; i++ {
				l = append(l, reloc{block: e.Start + uint64(i), src: e.Ref(), off: e.Off + i})
			}
			want[e.Ref()] = l
		}
	}
	var relocs []reloc
	for _, ref := range picked {
		l := want[ref]
		if len(l) == 0 {
			continue
		}
		sort.Slice(l, func(i, j int) bool { return l[i].off < l[j].off })
		n := int(sizes[ref])
		lo := int(l[0].off)
		hi := int(l[len(l)-1].off) + 1
		if hi > n {
			return rep, false, fmt.Errorf("%w: compaction of %s: slot %d past the chunk's %d blocks", ErrCorrupt, v.chunkKeyRef(ref), hi-1, n)
		}
		ci, err := v.chunkIndex(ctx, ref)
		if err != nil {
			return rep, false, fmt.Errorf("viperblock: compaction of %s: %w", v.chunkKeyRef(ref), err)
		}
		// One ranged read from the first live slot to the last.
		if err := v.spend(ctx, int64(hi-lo)*BlockSize); err != nil {
			return rep, false, err
		}
		// Not through the chunk read cache: the chunk is on its way out.
		b, err := v.readChunkSlots(context.WithValue(ctx, noReadCache{}, true), ref, ci, lo, hi)
		if err != nil {
			return rep, false, fmt.Errorf("viperblock: compaction read: %w", err)
		}
		v.stats.gcBytesRead.Add(uint64(len(b)))
		for i := range l {
			at := (int(l[i].off) - lo) * BlockSize
			d := b[at : at+BlockSize : at+BlockSize]
			if ent := ci.e[l[i].off]; ent.Block != l[i].block {
				return rep, false, fmt.Errorf("%w: compaction of %s: chunk index holds block %d where the map expects block %d", ErrCorrupt, v.chunkKeyRef(ref), ent.Block, l[i].block)
			}
			l[i].seq = ci.e[l[i].off].Seq
			l[i].data = d
		}
		relocs = append(relocs, l...)
	}
	if len(relocs) == 0 {
		return rep, false, nil
	}
	sort.Slice(relocs, func(i, j int) bool { return relocs[i].block < relocs[j].block })

	// Upload the new chunks.
	var parts [][]reloc
	for i := 0; i < len(relocs); i += chunk.MaxBlocks {
		parts = append(parts, relocs[i:min(i+chunk.MaxBlocks, len(relocs))])
	}
	if err := v.mayUpload(ctx); err != nil {
		return rep, false, err
	}
	v.drainMu.Lock()
	ids := make([]uint64, len(parts))
	for i := range parts {
		v.chunkSeq++
		ids[i] = v.epoch<<40 | v.chunkSeq
	}
	v.drainMu.Unlock()
	uploaded, err := v.compactUpload(ctx, parts, ids)
	committed := false
	defer func() {
		if !committed && !errors.Is(err, errCrash) {
			// Never referenced by a commit attempt: ours to delete.
			for _, id := range uploaded {
				_ = v.store.Delete(context.WithoutCancel(ctx), chunkKey(v.name, id))
			}
		}
	}()
	if err != nil {
		return rep, false, err
	}

	// Commit what is still current.
	v.drainMu.Lock()
	defer v.drainMu.Unlock()
	if st := v.state.Load(); st != stateOpen || v.closing {
		return rep, false, fmt.Errorf("%w: %s", ErrFenced, v.name)
	}
	cur := v.bmap.Load()
	var ops []blockmap.Extent
	newSizes := map[blockmap.ChunkRef]uint32{}
	moved := 0
	for i, part := range parts {
		newSizes[blockmap.ChunkRef{ID: ids[i]}] = uint32(len(part))
		for j, r := range part {
			if ref, off, ok := cur.Lookup(r.block); ok && ref == r.src && off == r.off {
				ops = appendExtent(ops, blockmap.Extent{Start: r.block, Count: 1, Chunk: ids[i], Off: uint32(j)})
				moved++
			}
		}
	}
	if moved == 0 {
		return rep, true, nil // everything was rewritten meanwhile
	}
	nm := cur.Overlay(ops)
	next := *v.man
	next.Extents = nm.Extents()
	all := make(map[blockmap.ChunkRef]uint32, len(v.chunkSize)+len(newSizes))
	for id, n := range v.chunkSize {
		all[id] = n
	}
	for id, n := range newSizes {
		all[id] = n
	}
	next.SetChunks(all)
	if err := v.crashPoint("compact.before-commit"); err != nil {
		return rep, false, err
	}
	committed = true // from here on, an attempt may apply: never delete the new chunks
	if err := v.commit(ctx, &next); err != nil {
		if errors.Is(err, errRebased) {
			return rep, true, nil // built on a state since replaced: run again
		}
		return rep, false, err
	}
	if err := v.crashPoint("compact.after-commit"); err != nil {
		return rep, false, err
	}
	var dropped []blockmap.ChunkRef
	kept := next.Sizes()
	dropSize := map[uint64]uint32{}
	for id, n := range v.chunkSize {
		if _, ok := kept[id]; !ok && id.Vol == 0 {
			dropped = append(dropped, id)
			dropSize[id.ID] = n
		}
	}
	v.setChunkSizes(&next)
	v.bmap.Store(nm)
	v.stats.gcRuns.Add(1)
	rep.ChunksRewritten = len(picked)
	rep.BlocksMoved = moved
	if err := v.crashPoint("compact.before-delete"); err != nil {
		return rep, false, err
	}
	for _, id := range v.deleteChunks(ctx, dropped) {
		rep.ChunksDeleted++
		v.stats.gcBytesReclaimed.Add(uint64(chunk.Size(int(dropSize[id.ID]))))
	}
	v.log.Debug("compacted", "chunks", len(picked), "blocks", moved, "deleted", rep.ChunksDeleted)
	return rep, true, nil
}

// compactUpload builds and uploads the new chunks, returning the ids it
// stored (even on failure).
func (v *Volume) compactUpload(ctx context.Context, parts [][]reloc, ids []uint64) ([]uint64, error) {
	put := v.store.Put
	batch, batched := v.store.(backend.BatchPutter)
	if batched {
		put = batch.PutUnsynced
	}
	bld := v.getBuilder()
	defer v.putBuilder(bld)
	var done []uint64
	for i, part := range parts {
		bld.Reset()
		for _, r := range part {
			bld.Add(r.block, r.seq, r.data)
		}
		obj := v.finishChunk(bld, ids[i])
		if err := v.spend(ctx, int64(len(obj))); err != nil {
			return done, err
		}
		if err := v.crashPoint("compact.before-chunk-put"); err != nil {
			return done, err
		}
		if err := put(ctx, chunkKey(v.name, ids[i]), obj); err != nil {
			return done, fmt.Errorf("viperblock: compaction upload chunk %016x: %w", ids[i], err)
		}
		done = append(done, ids[i])
		v.stats.chunksPut.Add(1)
		v.stats.gcBytesWritten.Add(uint64(len(obj)))
	}
	if !batched {
		return done, nil
	}
	if err := v.crashPoint("compact.before-chunk-sync"); err != nil {
		return done, err
	}
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = chunkKey(v.name, id)
	}
	if err := batch.Sync(ctx, keys); err != nil {
		return done, fmt.Errorf("viperblock: make the compaction's chunks durable: %w", err)
	}
	return done, nil
}

// Compact runs the compactor now, as a compaction request does: every chunk
// of the volume whose live fraction is below ChunkLiveRatio (and that no
// snapshot pins) is rewritten. It returns what it did.
func (v *Volume) Compact(ctx context.Context) (GCReport, error) {
	if err := v.checkWritable(); err != nil {
		return GCReport{}, err
	}
	return v.compactAll(ctx, true)
}

// ErrOwnerNoAnswer: the owner of an open volume did not answer a request
// in time (it may be dead, or too old to know the request).
var ErrOwnerNoAnswer = errors.New("viperblock: the volume's owner did not answer")

// AskCompact asks the owner of an open volume to compact it now (a
// compaction request, see request.go) and waits up to wait for the commit
// that answers. It returns the owner's epoch. A volume not open for
// writing is ErrInvalidArg (compact it with Volume.GC instead); an owner
// that does not answer in time is ErrOwnerNoAnswer.
func AskCompact(ctx context.Context, store backend.Store, vol string, wait time.Duration) (uint64, error) {
	deadline := time.Now().Add(wait)
	var id uint64
	for {
		m, _, err := readLiveManifest(ctx, store, vol)
		if err != nil {
			return 0, err
		}
		if m.Flags&manifest.FlagOpen == 0 {
			if id != 0 {
				return m.Epoch, fmt.Errorf("%w: %s was closed before its owner answered the compaction request", ErrOwnerNoAnswer, vol)
			}
			return m.Epoch, fmt.Errorf("%w: %s is not open on any node", ErrInvalidArg, vol)
		}
		if id != 0 && m.Request >= id {
			// Answered, unless another request overtook ours (its answer
			// says nothing about ours): then ask again.
			b, _, err := store.Get(ctx, requestKey(vol))
			if err != nil && !errors.Is(err, backend.ErrNotFound) {
				return m.Epoch, err
			}
			if got, _, _, derr := decodeRequestFlags(b); err == nil && derr == nil && got == id {
				return m.Epoch, nil
			}
			id = 0
		}
		if id == 0 {
			id = max(uint64(time.Now().UnixNano()), m.Request+1)
			if err := store.Put(ctx, requestKey(vol), encodeRequest2(id, 0, requestCompact)); err != nil {
				return m.Epoch, fmt.Errorf("viperblock: ask the owner of %s to compact: %w", vol, err)
			}
		}
		if time.Now().After(deadline) {
			return m.Epoch, fmt.Errorf("%w: the owner of %s (epoch %d, last commit %s ago) did not compact within %s",
				ErrOwnerNoAnswer, vol, m.Epoch, time.Since(time.Unix(0, m.Committed)).Round(time.Second), wait)
		}
		select {
		case <-ctx.Done():
			return m.Epoch, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// HasLiveOwner reports whether a volume is open for writing on some node
// whose lease is held (not released). Whether that lease has expired only
// waiting can tell; a caller that must not fence a serving owner asks it
// (AskCompact) rather than opening the volume.
func HasLiveOwner(ctx context.Context, store backend.Store, vol string) (bool, uint64, error) {
	m, _, err := readLiveManifest(ctx, store, vol)
	if err != nil {
		return false, 0, err
	}
	if m.Flags&manifest.FlagOpen == 0 {
		return false, m.Epoch, nil
	}
	b, _, err := store.Get(ctx, leaseKey(vol))
	if errors.Is(err, backend.ErrNotFound) {
		return false, m.Epoch, nil
	}
	if err != nil {
		return false, m.Epoch, err
	}
	l, err := decodeLease(b)
	if err != nil {
		return false, m.Epoch, err
	}
	return !l.released, m.Epoch, nil
}

// SpaceInfo is what a volume's chunk objects hold.
type SpaceInfo struct {
	// LiveBytes: data blocks of the volume's own chunks that its map or
	// one of its snapshots references (each counted once).
	LiveBytes int64
	// VolumeLiveBytes: those the volume's map references.
	VolumeLiveBytes int64
	// StoredBytes: the size of every chunk object stored under the volume
	// (headers and indexes included), referenced or not.
	StoredBytes int64
	Chunks      int // chunk objects stored
	// PinnedChunks: chunks only snapshots reference; GarbageChunks:
	// chunks nothing references (left by crashes, or awaiting deletion).
	PinnedChunks, GarbageChunks int
	// Compression is the algorithm the volume writes with; Encrypted says
	// whether it seals its data.
	Compression Compression
	Encrypted   bool
	// BlockBytes: the blocks the stored chunks hold (4 KiB each),
	// before compression; StoredBytes / BlockBytes is what compression
	// (and the chunk format's overhead) makes of them.
	BlockBytes int64
}

// CompressionRatio is BlockBytes / StoredBytes: above 1 when compression
// saves space (0 with nothing stored).
func (s SpaceInfo) CompressionRatio() float64 {
	if s.StoredBytes == 0 {
		return 0
	}
	return float64(s.BlockBytes) / float64(s.StoredBytes)
}

// Ratio is StoredBytes / LiveBytes (0 with no live data).
func (s SpaceInfo) Ratio() float64 {
	if s.LiveBytes == 0 {
		return 0
	}
	return float64(s.StoredBytes) / float64(s.LiveBytes)
}

// Space measures a volume's store usage: it lists the volume's chunks and
// reads its snapshots, and reads the header of each chunk nothing
// references (to learn its size). Data a clone shares with its parent
// counts for the parent.
func Space(ctx context.Context, store backend.Store, vol string) (SpaceInfo, error) {
	var s SpaceInfo
	m, _, err := readManifest(ctx, store, vol)
	if err != nil {
		return s, err
	}
	s.Compression, s.Encrypted = compressionName(m.Compression), m.Encrypted()
	// Version 2 chunks vary in size: read each one's header for it.
	v2 := m.Compression != 0 || len(m.Keys) > 0
	snaps, err := listSnapshotObjects(ctx, store, vol)
	if err != nil {
		return s, err
	}
	sizes := map[uint64]uint32{}
	used := map[uint64][]uint64{} // chunk id -> bitmap of referenced slots
	mark := func(ext []blockmap.Extent, count *int64) {
		for _, e := range ext {
			if e.Vol != 0 || e.Chunk == 0 {
				continue
			}
			bm := used[e.Chunk]
			if bm == nil {
				bm = make([]uint64, chunk.MaxBlocks/64)
				used[e.Chunk] = bm
			}
			for i := e.Off; i < e.Off+e.Count && i < chunk.MaxBlocks; i++ {
				if bm[i/64]&(1<<(i%64)) == 0 {
					bm[i/64] |= 1 << (i % 64)
					s.LiveBytes += BlockSize
				}
			}
			if count != nil {
				*count += int64(e.Count) * BlockSize
			}
		}
	}
	own := map[uint64]bool{}
	if m.Flags&manifest.FlagDeleted == 0 {
		mark(m.Extents, &s.VolumeLiveBytes)
	}
	for _, c := range m.Chunks {
		if c.Vol == 0 {
			sizes[c.ID] = c.Blocks
			own[c.ID] = true
		}
	}
	for _, sn := range snaps {
		mark(sn.Extents, nil)
		for _, c := range sn.Chunks {
			if c.Vol == 0 {
				sizes[c.ID] = c.Blocks
			}
		}
	}
	keys, err := store.List(ctx, vol+"/chunks/")
	if err != nil {
		return s, err
	}
	for _, k := range keys {
		id, err := strconv.ParseUint(strings.TrimPrefix(k, vol+"/chunks/"), 16, 64)
		if err != nil || id == 0 {
			continue
		}
		s.Chunks++
		n, known := sizes[id]
		if v2 {
			b, err := store.GetRange(ctx, k, 0, chunk.HeaderSize)
			if err != nil {
				continue
			}
			h, err := chunk.DecodeHeader(b)
			if err != nil {
				continue
			}
			if !known {
				s.GarbageChunks++
			} else if !own[id] {
				s.PinnedChunks++
			}
			s.StoredBytes += h.Size
			s.BlockBytes += int64(h.Count) * BlockSize
			continue
		}
		if !known {
			s.GarbageChunks++
			b, err := store.GetRange(ctx, k, 0, chunk.HeaderSize)
			if err != nil {
				continue // gone meanwhile, or torn: no size to count
			}
			h, err := chunk.DecodeHeader(b)
			if err != nil {
				continue
			}
			n = uint32(h.Count)
		} else if !own[id] {
			s.PinnedChunks++
		}
		s.StoredBytes += chunk.Size(int(n))
		s.BlockBytes += int64(n) * BlockSize
	}
	return s, nil
}
