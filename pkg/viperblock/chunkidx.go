package viperblock

import (
	"context"
	"fmt"
	"sync"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/blockmap"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/chunk"
)

// chunkIndexCache keeps the verified indexes of recently read chunks and
// the block count of every chunk the volume references.
type chunkIndexCache struct {
	mu    sync.Mutex // guards sizes, idx and loads
	sizes map[blockmap.ChunkRef]uint32
	idx   map[blockmap.ChunkRef]*chunkIdx
	max   int
	// loads are the index reads in progress: concurrent misses on one
	// chunk wait for a single read of its index.
	loads map[blockmap.ChunkRef]*indexLoad
}

// indexLoad is one read of a chunk's index; done closes when e and err
// are set.
type indexLoad struct {
	done chan struct{}
	e    *chunkIdx
	err  error
}

// chunkIdx is a chunk's verified index: version 1 entries, or a version 2
// index with the opener that decodes its extents.
type chunkIdx struct {
	e   []chunk.Entry
	v2  *chunk.Index
	op  *chunk.Opener
	key string // the chunk's store key, built once rather than per read
}

func (c *chunkIndexCache) setSize(id blockmap.ChunkRef, blocks uint32) {
	c.mu.Lock()
	if c.sizes == nil {
		c.sizes = map[blockmap.ChunkRef]uint32{}
	}
	c.sizes[id] = blocks
	c.mu.Unlock()
}

func (c *chunkIndexCache) put(id blockmap.ChunkRef, e *chunkIdx) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.idx == nil {
		c.idx = map[blockmap.ChunkRef]*chunkIdx{}
	}
	if len(c.idx) >= c.max {
		for k := range c.idx { // evict an arbitrary entry
			delete(c.idx, k)
			break
		}
	}
	c.idx[id] = e
}

// chunkIndex returns chunk id's verified index, reading it if needed (once
// for all the readers that miss it at the same time).
func (v *Volume) chunkIndex(ctx context.Context, id blockmap.ChunkRef) (*chunkIdx, error) {
	v.idx.mu.Lock()
	e, ok := v.idx.idx[id]
	n, known := v.idx.sizes[id]
	if ok {
		v.idx.mu.Unlock()
		return e, nil
	}
	if !known {
		v.idx.mu.Unlock()
		return nil, fmt.Errorf("%w: volume %s references unknown chunk %s", ErrCorrupt, v.name, v.chunkKeyRef(id))
	}
	if l, busy := v.idx.loads[id]; busy {
		v.idx.mu.Unlock()
		select {
		case <-l.done:
			return l.e, l.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	l := &indexLoad{done: make(chan struct{})}
	if v.idx.loads == nil {
		v.idx.loads = map[blockmap.ChunkRef]*indexLoad{}
	}
	v.idx.loads[id] = l
	v.idx.mu.Unlock()
	l.e, l.err = v.readChunkIndex(ctx, id, n)
	if l.err == nil {
		v.idx.put(id, l.e) // before the load ends: no second read starts
	}
	v.idx.mu.Lock()
	delete(v.idx.loads, id)
	v.idx.mu.Unlock()
	close(l.done)
	return l.e, l.err
}

// readChunkIndexOnce reads and verifies the index of chunk id, of n blocks:
// one ranged read in the format the volume writes (a version 1 index at
// the chunk's end; a version 2 header and index at its start), a second
// one only for a chunk of the other format.
func (v *Volume) readChunkIndexOnce(ctx context.Context, id blockmap.ChunkRef, n uint32) (*chunkIdx, error) {
	if _, v2 := v.chunkParams(); v2 {
		return v.readChunkHead2(ctx, id, n, nil)
	}
	b, err := v.getChunkRange(ctx, v.chunkKeyRef(id), chunk.IndexOffset(int(n)), chunk.IndexLen(int(n)))
	v.stats.backendReads.Add(1)
	if err != nil {
		return nil, fmt.Errorf("viperblock: read index of chunk %s: %w", v.chunkKeyRef(id), err)
	}
	e, err := chunk.DecodeIndex(b, id.ID, int(n))
	if err != nil {
		// A version 2 chunk (a plain volume's compressed ancestor)?
		hb, herr := v.getChunkRange(ctx, v.chunkKeyRef(id), 0, chunk.HeaderSize)
		v.stats.backendReads.Add(1)
		if herr == nil {
			if h, derr := chunk.DecodeHeader(hb); derr == nil && h.Version == chunk.Version2 {
				return v.readChunkHead2(ctx, id, n, nil)
			}
		}
		return nil, fmt.Errorf("%w: volume %s: %v", ErrCorrupt, v.name, err)
	}
	return &chunkIdx{e: e}, nil
}

// readChunkHead2 reads a version 2 chunk's header and index (head: the
// chunk's first bytes if already read).
func (v *Volume) readChunkHead2(ctx context.Context, id blockmap.ChunkRef, n uint32, head []byte) (*chunkIdx, error) {
	key := v.chunkKeyRef(id)
	want := chunk.HeadLen2(int(n), v.extentBlocks())
	b := head
	if int64(len(b)) < want {
		var err error
		b, err = v.getChunkRange(ctx, key, 0, want)
		v.stats.backendReads.Add(1)
		if err != nil {
			return nil, fmt.Errorf("viperblock: read index of chunk %s: %w", key, err)
		}
	}
	h, err := chunk.DecodeHeader(b)
	if err != nil {
		return nil, fmt.Errorf("%w: volume %s: chunk %s: %v", ErrCorrupt, v.name, key, err)
	}
	if h.ID != id.ID || h.Volume != v.refs[id.Vol] || h.Count != int(n) {
		return nil, fmt.Errorf("%w: volume %s: chunk %s: header names chunk %016x of %q with %d blocks", ErrCorrupt, v.name, key, h.ID, h.Volume, h.Count)
	}
	if h.Version == chunk.Version {
		e, err := v.readV1Index(ctx, id, n)
		if err != nil {
			return nil, err
		}
		return &chunkIdx{e: e}, nil
	}
	il := chunk.IndexLen2(h.Count, h.ExtentBlocks)
	if int64(len(b)) < chunk.HeaderSize+il {
		if b, err = v.getChunkRange(ctx, key, 0, chunk.HeaderSize+il); err != nil {
			return nil, fmt.Errorf("viperblock: read index of chunk %s: %w", key, err)
		}
		v.stats.backendReads.Add(1)
	}
	ix, err := chunk.DecodeIndex2(b[chunk.HeaderSize:chunk.HeaderSize+il], h)
	if err != nil {
		return nil, fmt.Errorf("%w: volume %s: chunk %s: %v", ErrCorrupt, v.name, key, err)
	}
	op, err := chunk.NewOpener(ix, v.keys.chunkKey(h.KeyID))
	if err != nil {
		return nil, fmt.Errorf("%w: volume %s: %v", ErrCorrupt, v.name, err)
	}
	return &chunkIdx{e: ix.Entries, v2: ix, op: op}, nil
}

func (v *Volume) readV1Index(ctx context.Context, id blockmap.ChunkRef, n uint32) ([]chunk.Entry, error) {
	b, err := v.getChunkRange(ctx, v.chunkKeyRef(id), chunk.IndexOffset(int(n)), chunk.IndexLen(int(n)))
	v.stats.backendReads.Add(1)
	if err != nil {
		return nil, fmt.Errorf("viperblock: read index of chunk %s: %w", v.chunkKeyRef(id), err)
	}
	e, err := chunk.DecodeIndex(b, id.ID, int(n))
	if err != nil {
		return nil, fmt.Errorf("%w: volume %s: %v", ErrCorrupt, v.name, err)
	}
	return e, nil
}

// readChunkSlots reads and verifies slots [lo, hi) of chunk ref (with its
// index ci) and returns their data, hi-lo blocks.
func (v *Volume) readChunkSlots(ctx context.Context, ref blockmap.ChunkRef, ci *chunkIdx, lo, hi int) ([]byte, error) {
	key := ci.key
	if ci.v2 == nil {
		b := make([]byte, (hi-lo)*BlockSize)
		if err := v.readChunkRange(ctx, key, chunk.DataOffset(lo), b); err != nil {
			return nil, fmt.Errorf("viperblock: read chunk %s: %w", key, err)
		}
		v.stats.backendReads.Add(1)
		for i := lo; i < hi; i++ {
			if err := chunk.VerifyBlock(b[(i-lo)*BlockSize:(i-lo+1)*BlockSize], ci.e[i]); err != nil {
				return nil, fmt.Errorf("%w: volume %s chunk %s: %v", ErrCorrupt, v.name, key, err)
			}
		}
		return b, nil
	}
	dec, k0, err := v.readExtents(ctx, ref, ci, lo, hi, make([]byte, 0))
	if err != nil {
		return nil, err
	}
	e := ci.v2.Header.ExtentBlocks
	return dec[(lo-k0*e)*BlockSize : (hi-k0*e)*BlockSize], nil
}

// readExtents reads and decodes the extents of a version 2 chunk that hold
// slots [lo, hi), in one ranged read, into dec (grown as needed). It
// returns the decoded bytes, which start at the first extent's first slot,
// and that extent's number.
func (v *Volume) readExtents(ctx context.Context, ref blockmap.ChunkRef, ci *chunkIdx, lo, hi int, dec []byte) ([]byte, int, error) {
	key := ci.key
	ix := ci.v2
	k0, _ := ix.ExtentOf(lo)
	k1, _ := ix.ExtentOf(hi - 1)
	off := ix.Extents[k0].Off
	end := ix.Extents[k1].Off + int64(ix.Extents[k1].Len)
	stored := getReadBuf(int(end - off))
	defer putReadBuf(stored)
	if err := v.readChunkRange(ctx, key, off, stored); err != nil {
		return nil, 0, fmt.Errorf("viperblock: read chunk %s: %w", key, err)
	}
	v.stats.backendReads.Add(1)
	first, _ := ix.ExtentSlots(k0)
	last, n := ix.ExtentSlots(k1)
	need := (last + n - first) * BlockSize
	if cap(dec) < need {
		dec = make([]byte, need)
	}
	dec = dec[:need]
	for k := k0; k <= k1; k++ {
		s, m := ix.ExtentSlots(k)
		ee := ix.Extents[k]
		if _, err := ci.op.Extent(k, stored[ee.Off-off:ee.Off-off+int64(ee.Len)], dec[(s-first)*BlockSize:(s-first+m)*BlockSize]); err != nil {
			return nil, 0, fmt.Errorf("%w: volume %s chunk %s: %v", ErrCorrupt, v.name, key, err)
		}
	}
	return dec, k0, nil
}

func chunkDataOffset(i uint32) int64 { return chunk.DataOffset(int(i)) }

func verifyBlock(data []byte, e chunk.Entry, blk uint64) error {
	if e.Block != blk {
		return fmt.Errorf("chunk index holds block %d where the map expects block %d", e.Block, blk)
	}
	return chunk.VerifyBlock(data, e)
}
