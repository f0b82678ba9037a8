package viperblock

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/blockmap"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/cache"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/chunk"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/seal"
)

func (v *Volume) checkRange(n int, off int64) error {
	if off < 0 || n < 0 || off+int64(n) > v.size.Load() || off+int64(n) < off {
		return fmt.Errorf("%w: [%d, +%d) of %d bytes", ErrOutOfRange, off, n, v.size.Load())
	}
	return nil
}

// WriteAt writes p at off. It returns once the data is in memory; Flush
// makes it durable. Writes that do not cover whole blocks read, modify and
// write the blocks they touch.
func (v *Volume) WriteAt(p []byte, off int64) (int, error) {
	v.ops.RLock()
	defer v.ops.RUnlock()
	if err := v.checkWritable(); err != nil {
		return 0, err
	}
	if err := v.walErr(); err != nil {
		return 0, err
	}
	if err := v.checkRange(len(p), off); err != nil {
		return 0, err
	}
	if err := v.retryWAL(); err != nil {
		return 0, err
	}
	done := 0
	for done < len(p) {
		// Admit a step of at most throttleStep bytes of records at a
		// time, so that a large request does not carry pending data far
		// beyond the limit.
		step := v.throttleStep()
		end := done
		var records int64
		for end < len(p) && records < step {
			end += BlockSize - int((off+int64(end-done))%BlockSize)
			records += int64(v.blockRecLen())
		}
		end = min(end, len(p))
		if err := v.throttle(records); err != nil {
			return done, err
		}
		var err error
		for done < end && err == nil {
			b := uint64(off / BlockSize)
			in := int(off % BlockSize)
			n := min(BlockSize-in, end-done)
			if in == 0 && n == BlockSize {
				v.appendBlock(b, p[done:done+BlockSize])
			} else if err = v.rmw(b, in, p[done:done+n]); err != nil {
				break
			}
			done += n
			off += int64(n)
		}
		v.admitted.Add(-records)
		if err != nil {
			v.wakeWaiters()
			return done, err
		}
	}
	v.stats.writes.Add(1)
	if v.pending.Load() >= v.opts.DrainBytes {
		v.kickDrain()
	}
	return done, nil
}

// rmw writes part of a block: read it, patch it, log it whole. A stripe lock
// keeps two partial writes to one block from losing each other's bytes.
func (v *Volume) rmw(b uint64, in int, p []byte) error {
	mu := &v.rmwMu[b%uint64(len(v.rmwMu))]
	mu.Lock()
	defer mu.Unlock()
	var buf [BlockSize]byte
	if err := v.readBlocks(context.Background(), b, buf[:]); err != nil {
		return err
	}
	copy(buf[in:], p)
	v.appendBlock(b, buf[:])
	return nil
}

func (v *Volume) kickDrain() {
	select {
	case v.kick <- struct{}{}:
	default:
	}
}

// throttleStep is the most record bytes one admission takes: 1/16 of the
// pending limit, at most 1 MiB, at least one block.
func (v *Volume) throttleStep() int64 {
	return max(min(v.opts.MaxPendingBytes/16, 1<<20), int64(v.blockRecLen()))
}

// throttle makes a writer wait while too much data waits to be drained,
// then admits n bytes of records; the writer releases them from admitted
// once it has appended them (pending then counts them). A writer is
// admitted while pending and admitted bytes together are below
// MaxPendingBytes, and the admission is one compare-and-swap on admitted,
// so concurrent writers never pass the check on the same total: pending
// data exceeds the limit by at most one admission (throttleStep).
// (pending only grows by what was admitted first, and a writer adds to
// pending before it releases its admission, so the sum is never
// undercounted.)
func (v *Volume) throttle(n int64) error {
	if v.admit(n) {
		return nil
	}
	v.kickDrain()
	v.waitMu.Lock()
	defer v.waitMu.Unlock()
	for !v.admit(n) {
		if err := v.checkWritable(); err != nil {
			return err
		}
		v.waitCond.Wait()
	}
	return nil
}

func (v *Volume) admit(n int64) bool {
	for {
		a := v.admitted.Load()
		if v.pending.Load()+a >= v.opts.MaxPendingBytes {
			return false
		}
		if v.admitted.CompareAndSwap(a, a+n) {
			return true
		}
	}
}

func (v *Volume) wakeWaiters() {
	v.waitMu.Lock()
	v.waitCond.Broadcast()
	v.waitMu.Unlock()
}

// ReadAt reads len(p) bytes at off.
func (v *Volume) ReadAt(p []byte, off int64) (int, error) {
	v.ops.RLock()
	defer v.ops.RUnlock()
	if err := v.checkReadable(); err != nil {
		return 0, err
	}
	if err := v.checkRange(len(p), off); err != nil {
		return 0, err
	}
	v.stats.reads.Add(1)
	if len(p) == 0 {
		return 0, nil
	}
	ctx := context.Background()
	if off%BlockSize == 0 && len(p)%BlockSize == 0 {
		if err := v.readBlocks(ctx, uint64(off/BlockSize), p); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	first := off / BlockSize
	last := (off + int64(len(p)) - 1) / BlockSize
	buf := make([]byte, (last-first+1)*BlockSize)
	if err := v.readBlocks(ctx, uint64(first), buf); err != nil {
		return 0, err
	}
	copy(p, buf[off-first*BlockSize:])
	return len(p), nil
}

// miss is a block that must come from the backend.
type miss struct {
	key cache.Key
	dst []byte
	blk uint64
}

// readBlocks fills dst (whole blocks) starting at block first.
func (v *Volume) readBlocks(ctx context.Context, first uint64, dst []byte) error {
	// A read of a few blocks (most random reads) keeps its misses on the
	// stack: no allocation per read.
	var small [8]miss
	misses := small[:0]
	n := uint64(len(dst) / BlockSize)
	for i := uint64(0); i < n; i++ {
		d := dst[i*BlockSize : (i+1)*BlockSize]
		if k, ok := v.resolve(first+i, d); ok {
			misses = append(misses, miss{k, d, first + i})
		}
	}
	if len(misses) == 0 {
		return nil
	}
	err := v.fetch(ctx, misses)
	if errors.Is(err, backend.ErrNotFound) {
		// A drain or GC may have replaced the chunk after we looked the
		// block up: resolve again against the newer map.
		for _, m := range misses {
			if k, ok := v.resolve(m.blk, m.dst); ok {
				if err := v.fetch(ctx, []miss{{k, m.dst, m.blk}}); err != nil {
					return err
				}
			}
		}
		return nil
	}
	return err
}

// resolve copies block b into dst if it is in memory, cached, or a hole;
// otherwise it returns the chunk location to fetch.
func (v *Volume) resolve(b uint64, dst []byte) (cache.Key, bool) {
	sh := &v.shards[b&(nShards-1)]
	sh.mu.Lock()
	if e, ok := sh.blocks[b]; ok {
		v.copyEntry(e, dst)
		sh.mu.Unlock()
		return cache.Key{}, false
	}
	sh.mu.Unlock()
	if v.hasTrims.Load() && v.trimmed(b) {
		clear(dst)
		return cache.Key{}, false
	}
	c, idx, ok := v.bmap.Load().Lookup(b)
	if !ok {
		clear(dst)
		return cache.Key{}, false
	}
	k := cache.Key{Vol: c.Vol, Chunk: c.ID, Index: idx}
	if v.cache.Get(k, dst) {
		return cache.Key{}, false
	}
	return k, true
}

// fetch reads missed blocks from the backend: one ranged read per run of
// blocks that sit next to each other in one chunk (whatever their order in
// the volume), several runs at a time, each block verified.
func (v *Volume) fetch(ctx context.Context, misses []miss) error {
	slices.SortFunc(misses, func(a, b miss) int {
		if c := cmp.Compare(a.key.Vol, b.key.Vol); c != 0 {
			return c
		}
		if c := cmp.Compare(a.key.Chunk, b.key.Chunk); c != 0 {
			return c
		}
		return cmp.Compare(a.key.Index, b.key.Index)
	})
	if runEnd(misses, 0) == len(misses) {
		return v.fetchRun(ctx, misses)
	}
	// Several runs, read at once: the goroutines get their own copy, so
	// the caller's slice (on its stack for a small read) does not escape.
	own := slices.Clone(misses)
	var runs [][]miss
	for i := 0; i < len(own); {
		j := runEnd(own, i)
		runs = append(runs, own[i:j])
		i = j
	}
	errs := make([]error, len(runs))
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for i, r := range runs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			errs[i] = v.fetchRun(ctx, r)
			<-sem
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// runEnd returns the end of the run of sorted misses that starts at i:
// blocks next to each other in one chunk.
func runEnd(misses []miss, i int) int {
	j := i + 1
	for j < len(misses) && misses[j].key.Vol == misses[i].key.Vol && misses[j].key.Chunk == misses[i].key.Chunk && misses[j].key.Index == misses[j-1].key.Index+1 {
		j++
	}
	return j
}

func (v *Volume) fetchRunOnce(ctx context.Context, run []miss) error {
	c := blockmap.ChunkRef{Vol: run[0].key.Vol, ID: run[0].key.Chunk}
	ci, err := v.chunkIndex(ctx, c)
	if err != nil {
		return err
	}
	if ci.v2 != nil {
		return v.fetchRun2(ctx, run, c, ci)
	}
	idx := ci.e
	first := run[0].key.Index
	n := len(run)
	if int(first)+n > len(idx) {
		return fmt.Errorf("%w: volume %s maps past the end of chunk %s", ErrCorrupt, v.name, v.chunkKeyRef(c))
	}
	// Read ahead in the chunk when this run continues the previous one.
	total := n
	if prev := v.lastFetch.Load(); v.readsAhead() && prev != nil && prev.chunk == c && prev.end == first {
		total = min(n+v.opts.ReadAheadBlocks, len(idx)-int(first))
	}
	// Read straight into the caller's buffer when the run lands in one
	// piece of it; otherwise through a pooled buffer.
	var data []byte
	direct := total == n && contiguous(run)
	if direct {
		data = run[0].dst[:n*BlockSize]
	} else {
		buf := getReadBuf(total * BlockSize)
		defer putReadBuf(buf)
		data = buf
	}
	err = v.readChunkRange(ctx, ci.key, chunkDataOffset(first), data)
	v.stats.backendReads.Add(1)
	if err != nil {
		return fmt.Errorf("viperblock: read chunk %s: %w", v.chunkKeyRef(c), err)
	}
	// Each block is verified once, as it comes from the store; the cache
	// holds only verified blocks.
	for i, m := range run {
		e := idx[int(m.key.Index)]
		d := data[i*BlockSize : (i+1)*BlockSize]
		if err := verifyBlock(d, e, m.blk); err != nil {
			return fmt.Errorf("%w: volume %s chunk %s: %v", ErrCorrupt, v.name, v.chunkKeyRef(c), err)
		}
		if !direct {
			copy(m.dst, d)
		}
		v.cache.Put(m.key, d)
	}
	for i := n; i < total; i++ {
		e := idx[int(first)+i]
		d := data[i*BlockSize : (i+1)*BlockSize]
		if verifyBlock(d, e, e.Block) == nil {
			v.cache.Put(cache.Key{Vol: c.Vol, Chunk: c.ID, Index: first + uint32(i)}, d)
		}
	}
	v.noteFetch(c, first+uint32(total))
	return nil
}

// fetchRun2 reads a run of blocks from a version 2 chunk: the extents that
// hold them, in one ranged read, each decoded (decompressed, opened) and
// verified once; every block of those extents goes into the cache.
func (v *Volume) fetchRun2(ctx context.Context, run []miss, c blockmap.ChunkRef, ci *chunkIdx) error {
	first := int(run[0].key.Index)
	n := len(run)
	count := ci.v2.Header.Count
	if first+n > count {
		return fmt.Errorf("%w: volume %s maps past the end of chunk %s", ErrCorrupt, v.name, v.chunkKeyRef(c))
	}
	total := n
	if prev := v.lastFetch.Load(); v.readsAhead() && prev != nil && prev.chunk == c && prev.end == uint32(first) {
		total = min(n+v.opts.ReadAheadBlocks, count-first)
	}
	e := ci.v2.Header.ExtentBlocks
	// Decode straight into the caller's buffer when the run lands in one
	// piece of it and covers whole extents; otherwise through a pooled
	// buffer.
	var buf []byte
	direct := total == n && first%e == 0 && ((first+n)%e == 0 || first+n == count) && contiguous(run)
	if direct {
		buf = run[0].dst[:n*BlockSize]
	} else {
		buf = getReadBuf(((first+total-1)/e - first/e + 1) * e * BlockSize)
		defer putReadBuf(buf)
	}
	dec, k0, err := v.readExtents(ctx, c, ci, first, first+total, buf)
	if err != nil {
		return err
	}
	base := k0 * e
	for _, m := range run {
		s := int(m.key.Index)
		if ent := ci.e[s]; ent.Block != m.blk {
			return fmt.Errorf("%w: volume %s chunk %s: index holds block %d where the map expects block %d", ErrCorrupt, v.name, v.chunkKeyRef(c), ent.Block, m.blk)
		}
		if !direct {
			copy(m.dst, dec[(s-base)*BlockSize:(s-base+1)*BlockSize])
		}
	}
	for i := 0; i < len(dec)/BlockSize; i++ {
		v.cache.Put(cache.Key{Vol: c.Vol, Chunk: c.ID, Index: uint32(base + i)}, dec[i*BlockSize:(i+1)*BlockSize])
	}
	v.noteFetch(c, uint32(first+total))
	return nil
}

// readsAhead reports whether backend reads that continue the last one
// read ahead into the cache.
func (v *Volume) readsAhead() bool { return v.opts.ReadAheadBlocks > 0 && v.cache.Cap() > 0 }

// noteFetch records where a backend read of chunk c ended, for the next
// read's read-ahead; without read-ahead there is nothing to record (and
// no allocation per read).
func (v *Volume) noteFetch(c blockmap.ChunkRef, end uint32) {
	if v.readsAhead() {
		v.lastFetch.Store(&fetchPos{c, end})
	}
}

// contiguous reports whether the run's destinations follow each other in
// one buffer, in the run's order.
func contiguous(run []miss) bool {
	base := run[0].dst[:cap(run[0].dst)]
	if len(base) < len(run)*BlockSize {
		return false
	}
	for i := 1; i < len(run); i++ {
		if &run[i].dst[0] != &base[i*BlockSize] {
			return false
		}
	}
	return true
}

// Pooled buffers for backend reads that cannot go straight to the caller:
// small ones (a few blocks) and large ones (a run plus its read-ahead).
// They hold stored bytes too: a sealed chunk's extents are longer than
// their blocks by a tag each (one per block in an uncompressed chunk), and
// a run of a version 2 chunk is read in whole extents, so the large class
// has room for an extent more. (A read-ahead run of sealed one-block
// extents that did not fit was allocated, and zeroed, on every fetch.)
const (
	storedBlock  = BlockSize + seal.Overhead
	smallReadBuf = 16 * storedBlock
	largeReadBuf = (512 + chunk.ExtentBlocks) * storedBlock
)

var smallReadBufs, largeReadBufs sync.Pool

func getReadBuf(n int) []byte {
	var p *sync.Pool
	switch {
	case n <= smallReadBuf:
		p = &smallReadBufs
	case n <= largeReadBuf:
		p = &largeReadBufs
	default:
		return make([]byte, n)
	}
	if b, ok := p.Get().(*[]byte); ok {
		return (*b)[:n]
	}
	if n <= smallReadBuf {
		return make([]byte, n, smallReadBuf)
	}
	return make([]byte, n, largeReadBuf)
}

func putReadBuf(b []byte) {
	switch cap(b) {
	case smallReadBuf:
		smallReadBufs.Put(&b)
	case largeReadBuf:
		largeReadBufs.Put(&b)
	}
}

// fetchPos is where the last backend read ended, for read-ahead.
type fetchPos struct {
	chunk blockmap.ChunkRef
	end   uint32
}

// Trim discards the whole blocks inside [off, off+length): they read as
// zeros and stop using space once drained. Partial blocks at the edges are
// left alone (use Zero to zero them).
func (v *Volume) Trim(off, length int64) error {
	v.ops.RLock()
	defer v.ops.RUnlock()
	if err := v.checkWritable(); err != nil {
		return err
	}
	if err := v.checkRange(0, off); err != nil {
		return err
	}
	if length < 0 || off+length > v.size.Load() {
		return fmt.Errorf("%w: trim [%d, +%d) of %d bytes", ErrOutOfRange, off, length, v.size.Load())
	}
	start := (off + BlockSize - 1) / BlockSize
	end := (off + length) / BlockSize
	if end <= start {
		return nil
	}
	if err := v.throttle(0); err != nil {
		return err
	}
	// One trim record covers at most maxTrim blocks (a 32-bit count).
	for b := uint64(start); b < uint64(end); b += maxTrim {
		v.trim(b, min(maxTrim, uint64(end)-b))
	}
	return nil
}

// Zero makes [off, off+length) read as zeros: whole blocks by trimming
// (metadata only), partial edge blocks by writing zeros.
func (v *Volume) Zero(off, length int64) error {
	if length == 0 {
		return v.checkRange(0, off)
	}
	if err := v.checkRange(0, off); err != nil {
		return err
	}
	if length < 0 || off+length > v.size.Load() {
		return fmt.Errorf("%w: zero [%d, +%d) of %d bytes", ErrOutOfRange, off, length, v.size.Load())
	}
	end := off + length
	var zeros [BlockSize]byte
	if head := off % BlockSize; head != 0 {
		n := min(BlockSize-head, length)
		if _, err := v.WriteAt(zeros[:n], off); err != nil {
			return err
		}
		off += n
	}
	if tail := end % BlockSize; tail != 0 && end-tail >= off {
		if _, err := v.WriteAt(zeros[:tail], end-tail); err != nil {
			return err
		}
		end -= tail
	}
	if end > off {
		return v.Trim(off, end-off)
	}
	return nil
}

const maxTrim = 1 << 30

// trim logs a trim of count blocks from start in every shard it touches and
// drops their undrained records from the block store.
func (v *Volume) trim(start, count uint64) {
	for i := range v.shards {
		v.shards[i].mu.Lock()
	}
	seq := v.seq.Add(1)
	var logged int64
	for i := range v.shards {
		sh := &v.shards[i]
		if count < nShards && !shardTouched(start, count, i) {
			continue
		}
		n := v.trimRecLen()
		sl, off := v.reserve(sh, n)
		// Every shard gets the same record: a sealed one is the same
		// bytes under the same nonce, which reveals nothing.
		v.putTrimRecord(sl.buf[off:off+n], sh.seg.salt, seq, start, uint32(count))
		logged += int64(n)
		dropRange(sh, start, count)
	}
	v.addTrim(start, count)
	for i := range v.shards {
		v.shards[i].mu.Unlock()
	}
	v.pending.Add(logged)
	v.stats.trims.Add(1)
}

func shardTouched(start, count uint64, i int) bool {
	for b := start; b < start+count; b++ {
		if int(b&(nShards-1)) == i {
			return true
		}
	}
	return false
}

// dropRange removes block store entries in [start, start+count); sh.mu held.
func dropRange(sh *shard, start, count uint64) {
	if count/nShards > uint64(len(sh.blocks)) {
		for b := range sh.blocks {
			if b >= start && b < start+count {
				delete(sh.blocks, b)
			}
		}
		return
	}
	first := start + (uint64(sh.idx)-start%nShards+nShards)%nShards
	for b := first; b < start+count; b += nShards {
		delete(sh.blocks, b)
	}
}

// Extent is one run of a volume's address space, as reported by Extents.
type Extent struct {
	Offset, Length int64
	// Zero is true for a hole: never written or trimmed; it reads as zeros.
	Zero bool
}

// Extents describes [off, off+length) as a list of data and hole runs.
func (v *Volume) Extents(off, length int64) ([]Extent, error) {
	if err := v.checkReadable(); err != nil {
		return nil, err
	}
	if err := v.checkRange(0, off); err != nil {
		return nil, err
	}
	if length < 0 || off+length > v.size.Load() {
		return nil, fmt.Errorf("%w: extents [%d, +%d)", ErrOutOfRange, off, length)
	}
	var out []Extent
	add := func(o, l int64, zero bool) {
		if n := len(out); n > 0 && out[n-1].Zero == zero && out[n-1].Offset+out[n-1].Length == o {
			out[n-1].Length += l
			return
		}
		out = append(out, Extent{o, l, zero})
	}
	if length == 0 {
		return nil, nil
	}
	first := uint64(off / BlockSize)
	last := uint64((off + length - 1) / BlockSize)
	span := func(s, e uint64, zero bool) { // blocks [s, e), clipped to the range
		o, end := max(int64(s)*BlockSize, off), min(int64(e)*BlockSize, off+length)
		if end > o {
			add(o, end-o, zero)
		}
	}
	// A drain stores its new map before it drops the block store entries
	// it drained and before it lowers pending. So the map is loaded only
	// after looking at pending or at the block store: a block that has
	// left memory by then is in that map. (Loaded first, an older map and
	// an emptied block store would report written data as a hole.)
	//
	// Fast path: nothing undrained, so the map alone answers, a run at a
	// time.
	if v.pending.Load() == 0 && !v.hasTrims.Load() {
		pos := first
		v.bmap.Load().Range(first, last-first+1, func(e blockmap.Extent) {
			span(pos, e.Start, true)
			span(e.Start, e.End(), false)
			pos = e.End()
		})
		span(pos, last+1, true)
		return out, nil
	}
	// Otherwise a window at a time: which blocks are in memory, then the
	// map.
	const window = 4096
	var inMem [window / 64]uint64
	for ws := first; ws <= last; ws += window {
		we := min(ws+window-1, last)
		clear(inMem[:])
		for b := ws; b <= we; b++ {
			sh := &v.shards[b&(nShards-1)]
			sh.mu.Lock()
			if _, ok := sh.blocks[b]; ok {
				inMem[(b-ws)/64] |= 1 << ((b - ws) % 64)
			}
			sh.mu.Unlock()
		}
		// The pending trims too are read before the map: a drain stores
		// its map before it clears the trims it committed, so a block
		// found trimmed here is a hole in whichever map loads next,
		// while a trim read after the map could already be cleared,
		// with an older map still saying the block holds data.
		var trimmedBits [window / 64]uint64
		if v.hasTrims.Load() {
			v.trimMu.RLock()
			for b := ws; b <= we; b++ {
				if v.trims.covers(b) {
					trimmedBits[(b-ws)/64] |= 1 << ((b - ws) % 64)
				}
			}
			v.trimMu.RUnlock()
		}
		var mapped [][2]uint64
		v.bmap.Load().Range(ws, we-ws+1, func(e blockmap.Extent) { mapped = append(mapped, [2]uint64{e.Start, e.End()}) })
		mi := 0
		for b := ws; b <= we; b++ {
			for mi < len(mapped) && mapped[mi][1] <= b {
				mi++
			}
			data := mi < len(mapped) && mapped[mi][0] <= b
			if inMem[(b-ws)/64]&(1<<((b-ws)%64)) != 0 {
				data = true
			} else if data && trimmedBits[(b-ws)/64]&(1<<((b-ws)%64)) != 0 {
				data = false
			}
			span(b, b+1, !data)
		}
	}
	return out, nil
}

// checkReadable fails reads of a closed volume, and of one released to
// another open: that open may have written since, so what this one holds
// is stale.
func (v *Volume) checkReadable() error {
	switch v.state.Load() {
	case stateClosed:
		return ErrClosed
	case stateReleased:
		return fmt.Errorf("%w: %s: released to another open", ErrFenced, v.name)
	}
	return nil
}
