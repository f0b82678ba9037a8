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
	mu    sync.Mutex // guards sizes and idx
	sizes map[blockmap.ChunkRef]uint32
	idx   map[blockmap.ChunkRef][]chunk.Entry
	max   int
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

// chunkIndex returns chunk id's verified index, reading it if needed.
func (v *Volume) chunkIndex(ctx context.Context, id blockmap.ChunkRef) ([]chunk.Entry, error) {
	v.idx.mu.Lock()
	e, ok := v.idx.idx[id]
	n, known := v.idx.sizes[id]
	v.idx.mu.Unlock()
	if ok {
		return e, nil
	}
	if !known {
		return nil, fmt.Errorf("%w: volume %s references unknown chunk %s", ErrCorrupt, v.name, v.chunkKeyRef(id))
	}
	b, err := v.store.GetRange(ctx, v.chunkKeyRef(id), chunk.IndexOffset(int(n)), chunk.IndexLen(int(n)))
	v.stats.backendReads.Add(1)
	if err != nil {
		return nil, fmt.Errorf("viperblock: read index of chunk %s: %w", v.chunkKeyRef(id), err)
	}
	e, err = chunk.DecodeIndex(b, id.ID, int(n))
	if err != nil {
		return nil, fmt.Errorf("%w: volume %s: %v", ErrCorrupt, v.name, err)
	}
	v.idx.put(id, e)
	return e, nil
}

func chunkDataOffset(i uint32) int64 { return chunk.DataOffset(int(i)) }

func verifyBlock(data []byte, e chunk.Entry, blk uint64) error {
	if e.Block != blk {
		return fmt.Errorf("chunk index holds block %d where the map expects block %d", e.Block, blk)
	}
	return chunk.VerifyBlock(data, e)
}
