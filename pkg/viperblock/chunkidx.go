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
	idx   map[blockmap.ChunkRef][]chunk.Entry
	max   int
	// loads are the index reads in progress: concurrent misses on one
	// chunk wait for a single read of its index.
	loads map[blockmap.ChunkRef]*indexLoad
}

// indexLoad is one read of a chunk's index; done closes when e and err
// are set.
type indexLoad struct {
	done chan struct{}
	e    []chunk.Entry
	err  error
}

func (c *chunkIndexCache) setSize(id blockmap.ChunkRef, blocks uint32) {
	c.mu.Lock()
	if c.sizes == nil {
		c.sizes = map[blockmap.ChunkRef]uint32{}
	}
	c.sizes[id] = blocks
	c.mu.Unlock()
}

func (c *chunkIndexCache) put(id blockmap.ChunkRef, e []chunk.Entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.idx == nil {
		c.idx = map[blockmap.ChunkRef][]chunk.Entry{}
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
func (v *Volume) chunkIndex(ctx context.Context, id blockmap.ChunkRef) ([]chunk.Entry, error) {
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

// readChunkIndexOnce reads and verifies the index of chunk id, of n blocks.
func (v *Volume) readChunkIndexOnce(ctx context.Context, id blockmap.ChunkRef, n uint32) ([]chunk.Entry, error) {
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

func chunkDataOffset(i uint32) int64 { return chunk.DataOffset(int(i)) }

func verifyBlock(data []byte, e chunk.Entry, blk uint64) error {
	if e.Block != blk {
		return fmt.Errorf("chunk index holds block %d where the map expects block %d", e.Block, blk)
	}
	return chunk.VerifyBlock(data, e)
}
