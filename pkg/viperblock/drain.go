package viperblock

import (
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/blockmap"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/chunk"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/manifest"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/wal"
)

// Drain pushes everything written so far to the backend and commits it.
func (v *Volume) Drain(ctx context.Context) error {
	if v.opts.ReadOnly {
		return nil
	}
	if err := v.checkWritable(); err != nil {
		return err
	}
	return v.drain(ctx)
}

// seal closes the active segment of every shard that has records, so that
// the sealed segments hold exactly the records with sequence numbers up to
// the returned high-water mark. It returns every sealed segment.
func (v *Volume) seal() ([]*segment, uint64) {
	for i := range v.shards {
		v.shards[i].mu.Lock()
	}
	v.gen++
	var segs []*segment
	for i := range v.shards {
		sh := &v.shards[i]
		if sh.seg.size > 0 {
			sh.sealed = append(sh.sealed, sh.seg)
			sh.seg = v.newSegment(i, v.gen)
		}
		segs = append(segs, sh.sealed...)
	}
	hw := v.seq.Load()
	v.sealTrims()
	var fresh []*segment
	for i := range v.shards {
		if s := v.shards[i].seg; s.gen == v.gen {
			fresh = append(fresh, s)
		}
		v.shards[i].mu.Unlock()
	}
	// Create the new segments' files in the background, so the first Flush
	// after a drain does not pay for a file creation and a directory sync.
	for _, s := range fresh {
		select {
		case v.writeback <- s:
		default:
		}
	}
	return segs, hw
}

type drained struct {
	seq uint64
	rec wal.Record // its block record (sealed or not)
}

// drain is Drain without the state check (Close uses it).
func (v *Volume) drain(ctx context.Context) error {
	v.drainMu.Lock()
	defer v.drainMu.Unlock()
	for pass := 1; ; pass++ {
		if st := v.state.Load(); st == stateFenced || st == stateReleased {
			return fmt.Errorf("%w: %s", ErrFenced, v.name)
		}
		err := v.drainOnce(ctx)
		if !errors.Is(err, errRebased) {
			return err
		}
		// commit adopted an earlier commit of ours that had applied after
		// all; this pass was built on the state before it. Build again on
		// the adopted state. (A second rebase cannot happen: adopting
		// forgets every attempt in doubt.)
		if pass == 3 {
			return v.drainFailed(fmt.Errorf("viperblock: %s: drain rebuilt %d times on adopted commits", v.name, pass))
		}
	}
}

// drainOnce seals, uploads and commits once. drainMu must be held.
func (v *Volume) drainOnce(ctx context.Context) error {
	segs, hw := v.seal()
	if len(segs) == 0 && !v.dirty {
		return nil
	}
	// Upload nothing unless we are still the owner: a stale owner's
	// chunks would be garbage in another owner's volume.
	if err := v.mayUpload(ctx); err != nil {
		return v.drainFailed(err)
	}
	start := time.Now()

	// Newest record of each block, and the trims, among the sealed records
	// not yet committed.
	writes := map[uint64]drained{}
	var trims []trimRange
	trimSeen := map[uint64]bool{}
	var segBytes int64
	for _, seg := range segs {
		segBytes += seg.size
		for _, sl := range seg.slabs {
			for off := 0; off < sl.used; {
				r := wal.ParseTrusted(sl.buf[off:])
				off += wal.RecordLen(r.Type)
				if r.Seq <= v.man.SeqHW {
					continue
				}
				if r.IsBlock() {
					if cur, ok := writes[r.Block]; !ok || r.Seq > cur.seq {
						writes[r.Block] = drained{r.Seq, r}
					}
				} else if !trimSeen[r.Seq] {
					trimSeen[r.Seq] = true
					trims = append(trims, trimRange{r.Block, uint64(r.Count), r.Seq})
				}
			}
		}
	}
	// A trim newer than a block's write wins over it.
	if len(trims) > 0 {
		ws := make([]blockSeq, 0, len(writes))
		for b, w := range writes {
			ws = append(ws, blockSeq{b, w.seq})
		}
		for i, dead := range trimmedLater(trims, ws) {
			if dead {
				delete(writes, ws[i].block)
			}
		}
	}
	maxBlock := uint64(v.size.Load() / BlockSize)
	// The map after this drain's trims.
	m := v.bmap.Load()
	if len(trims) > 0 {
		m = m.Overlay(clearOps(trims, maxBlock))
	}
	blocks := make([]uint64, 0, len(writes))
	for b := range writes {
		if b < maxBlock {
			blocks = append(blocks, b)
		}
	}
	sort.Slice(blocks, func(i, j int) bool { return blocks[i] < blocks[j] })

	// Pack and upload chunks, several at a time.
	var ops []blockmap.Extent
	newSizes := map[blockmap.ChunkRef]uint32{}
	var parts [][]uint64
	for i := 0; i < len(blocks); i += chunk.MaxBlocks {
		parts = append(parts, blocks[i:min(i+chunk.MaxBlocks, len(blocks))])
	}
	ids := make([]uint64, len(parts))
	for i := range parts {
		v.chunkSeq++
		ids[i] = v.epoch<<40 | v.chunkSeq
	}
	if err := v.upload(ctx, parts, ids, writes); err != nil {
		if errors.Is(err, errCrash) {
			return err
		}
		return v.drainFailed(err)
	}
	for i, part := range parts {
		newSizes[blockmap.ChunkRef{ID: ids[i]}] = uint32(len(part))
		for j, b := range part {
			ops = appendExtent(ops, blockmap.Extent{Start: b, Count: 1, Chunk: ids[i], Off: uint32(j)})
		}
	}

	// The new map: the old one, minus the trims, plus the new writes.
	if len(ops) > 0 {
		m = m.Overlay(ops)
	}
	next := *v.man
	next.Size = v.size.Load()
	next.SeqHW = max(hw, v.man.SeqHW)
	next.Request = max(next.Request, v.request)
	next.Extents = m.Extents()
	sizes := make(map[blockmap.ChunkRef]uint32, len(v.chunkSize)+len(newSizes))
	for id, n := range v.chunkSize {
		sizes[id] = n
	}
	for id, n := range newSizes {
		sizes[id] = n
	}
	next.SetChunks(sizes)
	if err := v.crashPoint("drain.before-commit"); err != nil {
		return err
	}
	if err := v.commit(ctx, &next); err != nil {
		return err
	}
	if err := v.crashPoint("drain.after-commit"); err != nil {
		return err
	}

	// Committed. Publish the new map, then retire what it now holds.
	var dropped []blockmap.ChunkRef
	kept := next.Sizes()
	for id := range v.chunkSize {
		if _, ok := kept[id]; !ok && id.Vol == 0 {
			dropped = append(dropped, id)
		}
	}
	v.setChunkSizes(&next)
	v.dirty = false
	v.bmap.Store(m)
	// Trims first, then block entries: a reader never finds neither the
	// newest data nor the hole.
	v.trimsCommitted()
	// Retiring the drained segments skips the WAL writes of their records
	// not yet written (see log.go, "Deferred WAL writes").
	for _, seg := range segs {
		if seg.size > seg.wrote.Load() {
			if err := v.crashPoint("drain.before-skip-wal"); err != nil {
				return err
			}
			break
		}
	}
	// Drop the block store entries that point into the drained segments:
	// those blocks now read through the new map.
	for _, seg := range segs {
		sh := &v.shards[seg.shard]
		sh.mu.Lock()
		for _, sl := range seg.slabs {
			for off := 0; off < sl.used; {
				r := wal.ParseTrusted(sl.buf[off:])
				at := off
				off += wal.RecordLen(r.Type)
				if r.IsBlock() {
					if e, ok := sh.blocks[r.Block]; ok && e.sl == sl && e.off == at {
						delete(sh.blocks, r.Block)
					}
				}
			}
		}
		k := 0
		for _, s := range sh.sealed {
			if !containsSeg(segs, s) {
				sh.sealed[k] = s
				k++
			}
		}
		clear(sh.sealed[k:])
		sh.sealed = sh.sealed[:k]
		sh.mu.Unlock()
		v.retire(seg)
	}
	v.pending.Add(-segBytes)
	v.wakeWaiters()
	v.trimStoreLog(ctx, next.SeqHW)
	v.deleteChunks(ctx, dropped)
	v.stats.drains.Add(1)
	v.stats.m.drain.Since(start)
	v.lastErr.Store(nil)
	v.log.Debug("drained", "blocks", len(blocks), "trims", len(trims), "seq", next.SeqHW, "took", time.Since(start))
	return nil
}

// upload builds and uploads one chunk per part, up to
// Options.UploadConcurrency at a time. Any failure fails the whole drain:
// chunks already uploaded are unreferenced and reclaimed later.
func (v *Volume) upload(ctx context.Context, parts [][]uint64, ids []uint64, writes map[uint64]drained) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, len(parts))
	work := make(chan int)
	// A store that can batch durability gets the chunks unsynced, then one
	// Sync for all of them below, before the commit references them.
	put := v.store.Put
	batch, batched := v.store.(backend.BatchPutter)
	if batched {
		put = batch.PutUnsynced
	}
	var wg sync.WaitGroup
	for w := 0; w < min(v.opts.UploadConcurrency, len(parts)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			bld := v.getBuilder()
			defer v.putBuilder(bld)
			var plain [BlockSize]byte
			for i := range work {
				bld.Reset()
				for _, b := range parts[i] {
					w := writes[b]
					d, err := v.recordBlock(w.rec, plain[:])
					if err != nil {
						panic(fmt.Sprintf("viperblock: a WAL record in memory does not open: %v", err))
					}
					bld.Add(b, w.seq, d)
				}
				obj := v.finishChunk(bld, ids[i])
				if err := v.crashPoint("drain.before-chunk-put"); err != nil {
					errs <- err
					cancel()
					continue
				}
				if err := put(ctx, chunkKey(v.name, ids[i]), obj); err != nil {
					errs <- fmt.Errorf("viperblock: upload chunk %016x: %w", ids[i], err)
					cancel()
					continue
				}
				v.stats.chunksPut.Add(1)
				v.stats.bytesDrained.Add(uint64(len(obj)))
			}
		}()
	}
feed:
	for i := range parts {
		select {
		case work <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	if !batched || len(parts) == 0 {
		return nil
	}
	if err := v.crashPoint("drain.before-chunk-sync"); err != nil {
		return err
	}
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = chunkKey(v.name, id)
	}
	if err := batch.Sync(ctx, keys); err != nil {
		return fmt.Errorf("viperblock: make the drain's chunks durable: %w", err)
	}
	return nil
}

// getBuilder returns a reusable chunk buffer (4 MiB each, kept for reuse:
// fresh memory is expensive to fault in).
func (v *Volume) getBuilder() *chunk.Builder {
	select {
	case b := <-v.builders:
		return b
	default:
		return new(chunk.Builder)
	}
}

func (v *Volume) putBuilder(b *chunk.Builder) {
	select {
	case v.builders <- b:
	default:
	}
}

func containsSeg(l []*segment, s *segment) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

func appendExtent(ops []blockmap.Extent, e blockmap.Extent) []blockmap.Extent {
	if n := len(ops); n > 0 {
		l := &ops[n-1]
		if l.End() == e.Start && l.Chunk == e.Chunk && l.Off+l.Count == e.Off {
			l.Count++
			return ops
		}
	}
	return append(ops, e)
}

// clearOps turns trims into sorted, non-overlapping clearing operations.
func clearOps(trims []trimRange, maxBlock uint64) []blockmap.Extent {
	t := slices.Clone(trims)
	slices.SortFunc(t, func(a, b trimRange) int { return cmp.Compare(a.start, b.start) })
	var ops []blockmap.Extent
	for _, r := range t {
		s, e := r.start, min(r.start+r.count, maxBlock)
		if s >= e {
			continue
		}
		if n := len(ops); n > 0 && ops[n-1].End() >= s {
			if e <= ops[n-1].End() {
				continue
			}
			if e-ops[n-1].Start <= maxTrim {
				ops[n-1].Count = uint32(e - ops[n-1].Start)
				continue
			}
			s = ops[n-1].End()
		}
		ops = append(ops, blockmap.Extent{Start: s, Count: uint32(e - s)})
	}
	return ops
}

// commit writes next as the volume's manifest by compare-and-swap against
// the last committed version and, once it knows the write applied, makes it
// the committed state. drainMu must be held. Only a nil return means next
// is committed: the drain's post-commit steps (publishing the map, dropping
// drained block-store entries, deleting WAL segments and chunks) must not
// run otherwise.
//
// A failed PutIf does not say whether it applied. Its answer can be lost
// after the store applied it (a reset or a timeout on the store's last
// attempt, the caller's deadline), a request held up in the network can
// apply after the PutIf gave up, and the S3 store reports a precondition
// failure for a write of its own that another writer replaced. So a failure
// is never taken at its word: commit reads the manifest back and decides by
// what it holds (see readBack):
//
//   - exactly next, byte for byte: the PutIf applied. Adopt it (its current
//     version) and carry on as if the PutIf had succeeded.
//   - another owner's epoch or nonce, or no manifest: another owner took the
//     volume over (or deleted it). Fence.
//   - exactly the last committed manifest: the PutIf did not apply (yet).
//     After a precondition failure (the version moved, not the content),
//     retry against the current version; after an unknown outcome, fail the
//     drain (the store has retried already) and keep next in doubt.
//   - exactly an earlier attempt of ours still in doubt: that one applied
//     late (or was reported failed although it applied). Adopt it as the
//     committed state and return errRebased: next was built on the state
//     before it and may reference chunks the adopted state dropped, which a
//     collector may already have deleted, so the drain is built again.
//   - our epoch and nonce but content we never wrote: someone rewrote the
//     manifest (Expand or Delete after a closing commit). Fence: the state
//     is not ours to build on, and the WAL keeps our writes for a reopen.
//   - unreadable: the outcome stays unknown. Fail the drain; next stays in
//     doubt and a later commit resolves it.
//
// Every failed attempt is remembered in doubt (by the SHA-256 of its
// encoding) until a commit is known: all of them were conditioned on the
// current version, so at most one of them can ever apply. Comparing whole
// encodings is exact: each carries its own commit time and sequence
// high-water mark, so no two attempts encode alike.
func (v *Volume) commit(ctx context.Context, next *manifest.Manifest) error {
	next.Committed = time.Now().UnixNano()
	next.Flags |= manifest.FlagOpen
	if v.closing {
		next.Flags &^= manifest.FlagOpen
	}
	enc := manifest.Encode(next)
	sum := sha256.Sum256(enc)
	for attempt := 1; ; attempt++ {
		ver, err := v.store.PutIf(ctx, manifestKey(v.name), enc, v.manVer)
		if err == nil {
			v.setCommitted(next, sum, ver)
			return nil
		}
		v.noteInDoubt(sum)
		rb := v.readBack(ctx, sum)
		switch rb.outcome {
		case outcomeApplied, outcomeEarlier:
			if serr := v.syncManifest(ctx); serr != nil {
				return v.drainFailed(fmt.Errorf("viperblock: commit manifest: %w; it applied, but making it durable failed: %v", err, serr))
			}
			v.stats.resolvedCommits.Add(1)
			if rb.outcome == outcomeApplied {
				v.log.Warn("manifest commit reported failure but had applied; adopted", "err", err, "seq", next.SeqHW)
				v.setCommitted(next, sum, rb.ver)
				return nil
			}
			v.log.Warn("an earlier manifest commit reported as failed had applied; adopted, draining again on it",
				"err", err, "seq", rb.man.SeqHW)
			v.setCommitted(rb.man, rb.sum, rb.ver)
			v.setChunkSizes(rb.man)
			v.bmap.Store(blockmap.New(rb.man.Extents))
			return errRebased
		case outcomeForeign:
			return v.fence(fmt.Errorf("%s (our commit: %v)", rb.why, err))
		case outcomeNotApplied:
			if errors.Is(err, backend.ErrPrecondition) && attempt < 3 {
				v.manVer = rb.ver
				continue
			}
			return v.drainFailed(fmt.Errorf("viperblock: commit manifest (not applied as of a read-back): %w", err))
		default:
			return v.drainFailed(fmt.Errorf("viperblock: commit manifest: %w; outcome unknown: reading the manifest back failed: %v", err, rb.err))
		}
	}
}

// errRebased: commit adopted an earlier commit of ours; drain again.
var errRebased = errors.New("viperblock: adopted an earlier commit; drain again")

// maxInDoubt bounds the commit attempts remembered in doubt. They pile up
// only while the backend fails both writes and reads; forgetting the oldest
// errs on the safe side (an attempt that applies after being forgotten
// fences the volume).
const maxInDoubt = 1024

// setCommitted records m (encoded as hashing to sum, at version ver) as the
// committed manifest; every attempt in doubt is now dead. drainMu must be
// held.
func (v *Volume) setCommitted(m *manifest.Manifest, sum [sha256.Size]byte, ver backend.Version) {
	v.man, v.manSum, v.manVer = m, sum, ver
	v.committedHW.Store(m.SeqHW)
	v.inDoubt = v.inDoubt[:0]
}

// noteInDoubt remembers a failed commit attempt. drainMu must be held.
func (v *Volume) noteInDoubt(sum [sha256.Size]byte) {
	for _, s := range v.inDoubt {
		if s == sum {
			return
		}
	}
	if len(v.inDoubt) == maxInDoubt {
		v.inDoubt = append(v.inDoubt[:0], v.inDoubt[1:]...)
	}
	v.inDoubt = append(v.inDoubt, sum)
}

// commitOutcome is what the manifest read back after a failed commit says.
type commitOutcome int

const (
	outcomeUnknown    commitOutcome = iota // the manifest could not be read
	outcomeApplied                         // exactly the attempt that failed
	outcomeNotApplied                      // exactly the last committed manifest
	outcomeEarlier                         // exactly an earlier attempt in doubt
	outcomeForeign                         // a state this owner did not write
)

type readBackResult struct {
	outcome commitOutcome
	ver     backend.Version    // the manifest's current version
	man     *manifest.Manifest // outcomeEarlier: the state to adopt
	sum     [sha256.Size]byte  // outcomeEarlier: its encoding's hash
	why     string             // outcomeForeign: what the manifest holds
	err     error              // outcomeUnknown: why it could not be read
}

// readBack reads the manifest after a failed commit of the encoding that
// hashes to sum, and classifies it (see commit). drainMu must be held.
func (v *Volume) readBack(ctx context.Context, sum [sha256.Size]byte) readBackResult {
	if err := ctx.Err(); err != nil {
		return readBackResult{err: err}
	}
	b, ver, err := v.store.Get(ctx, manifestKey(v.name))
	if errors.Is(err, backend.ErrNotFound) {
		return readBackResult{outcome: outcomeForeign, why: "the manifest is gone"}
	}
	if err != nil {
		return readBackResult{err: err}
	}
	got := sha256.Sum256(b)
	if got == sum {
		return readBackResult{outcome: outcomeApplied, ver: ver}
	}
	m, err := manifest.Decode(b)
	if err != nil || m.Name != v.name {
		return readBackResult{outcome: outcomeForeign, why: fmt.Sprintf("the manifest holds no state of this volume (%v)", err)}
	}
	if m.Epoch != v.epoch || m.Owner != v.owner {
		return readBackResult{outcome: outcomeForeign, why: fmt.Sprintf("the manifest belongs to epoch %d, nonce %x (ours: %d, %x)", m.Epoch, m.Owner[:4], v.epoch, v.owner[:4])}
	}
	if got == v.manSum {
		return readBackResult{outcome: outcomeNotApplied, ver: ver}
	}
	for _, s := range v.inDoubt {
		if s == got {
			return readBackResult{outcome: outcomeEarlier, ver: ver, man: m, sum: got}
		}
	}
	return readBackResult{outcome: outcomeForeign, why: fmt.Sprintf("the manifest holds our epoch %d but a state we never committed (seq %d)", m.Epoch, m.SeqHW)}
}

// syncManifest makes the manifest durable on a store that batches
// durability (the file store): a PutIf that failed after the rename that
// applied it may have failed its directory fsync, so a manifest adopted
// after a failure is trusted only once it is synced. Other stores serve
// only durable state.
func (v *Volume) syncManifest(ctx context.Context) error {
	if b, ok := v.store.(backend.BatchPutter); ok {
		return b.Sync(ctx, []string{manifestKey(v.name)})
	}
	return nil
}

// setChunkSizes records the chunk table of the committed manifest m.
func (v *Volume) setChunkSizes(m *manifest.Manifest) {
	v.chunkSize = m.Sizes()
	for ref, n := range v.chunkSize {
		v.idx.setSize(ref, n)
	}
}

// deleteChunks deletes chunks of this volume that the committed map no
// longer references, unless a snapshot still does. The snapshot list is
// read after the commit that dropped them, which is what makes this safe
// against a snapshot being taken concurrently (see snapshot.go). Chunks
// kept here, or whose deletion fails, are left for GC. It returns the
// chunks it deleted.
func (v *Volume) deleteChunks(ctx context.Context, dropped []blockmap.ChunkRef) (deleted []blockmap.ChunkRef) {
	if len(dropped) == 0 {
		return nil
	}
	pinned, err := snapshotChunks(ctx, v.store, v.name)
	if err != nil {
		v.log.Warn("could not read snapshots; unreferenced chunks left for GC", "err", err)
		return nil
	}
	for _, id := range dropped {
		if pinned[id.ID] {
			continue
		}
		if err := v.store.Delete(ctx, chunkKey(v.name, id.ID)); err != nil {
			v.log.Warn("could not delete unreferenced chunk; GC will retry", "chunk", chunkKey(v.name, id.ID), "err", err)
			continue
		}
		v.chunkDeleted(id)
		deleted = append(deleted, id)
	}
	return deleted
}

func (v *Volume) drainFailed(err error) error {
	v.stats.drainErrors.Add(1)
	v.lastErr.Store(&err)
	return err
}

// fence marks the volume as taken over by another owner (or its manifest
// otherwise changed by someone else).
func (v *Volume) fence(cause error) error {
	v.state.CompareAndSwap(stateOpen, stateFenced)
	err := fmt.Errorf("%w: %s: the manifest changed under us (%v); writes now fail", ErrFenced, v.name, cause)
	v.lastErr.Store(&err)
	v.log.Error("volume fenced: another owner took it over", "epoch", v.epoch, "cause", cause)
	v.wakeWaiters()
	return err
}

// drainLoop drains on a timer, when enough is pending, and retries with
// backoff after failures.
func (v *Volume) drainLoop() {
	defer v.done.Done()
	t := time.NewTicker(v.opts.DrainInterval)
	defer t.Stop()
	backoff := 100 * time.Millisecond
	for {
		select {
		case <-v.stop:
			return
		case <-t.C:
		case <-v.kick:
		}
		if !v.pollRequest(context.Background()) && v.pending.Load() == 0 {
			continue
		}
		err := v.drain(context.Background())
		if err == nil {
			backoff = 100 * time.Millisecond
			continue
		}
		if errors.Is(err, ErrFenced) || errors.Is(err, errCrash) {
			return
		}
		v.log.Warn("drain failed; retrying", "err", err, "backoff", backoff)
		select {
		case <-v.stop:
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
		v.kickDrain()
	}
}

// errCrash is returned by test crash points.
var errCrash = errors.New("viperblock: simulated crash")
