package viperblock

import (
	"log/slog"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/cache"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/chunk"
)

// A volume's memory, and how Options.MemoryBytes divides it.
//
// What an open volume holds in memory, beyond a fixed amount for its code
// and metadata:
//
//   - pending writes: every record not yet drained sits in a WAL slab. The
//     throttle (io.go) keeps pending bytes within MaxPendingBytes plus one
//     admission step (at most 1/16 of the limit); each live segment
//     wastes at most one partly filled slab: 16 active, 16 sealed while a
//     drain is in flight, and 16 more when that drain failed and the next
//     seal came on top of it (wasteSlabs in all; a store outage under
//     writers stalled at the limit reached 40 in tests). Slabs are 1/128
//     of the limit (slabSizeFor, at least 64 KiB), so the slabs in use stay
//     within 23/16 of the limit, or the limit, a step and 3 MiB for small
//     limits. Retired slabs go
//     to the volume's pool and are taken from it before any new one is
//     allocated, so slabs in use and pooled together never exceed the
//     most ever in use at once.
//   - the read cache: CacheBlocks blocks of 4 KiB plus their index
//     (cacheEntryBytes each);
//   - the chunk index cache: up to chunkIndexes verified chunk indexes of
//     chunkIndexBytes each;
//   - the drain's chunk buffers: UploadConcurrency chunks of up to
//     chunkBufBytes each, kept for reuse.
//
// MemoryBytes = S divides as: the chunk buffers first (UploadConcurrency
// defaults to one per 32 MiB of S, between 1 and 4); of the rest R, 5/8
// for pending slabs (MaxPendingBytes what leaves room in it for the step
// and the slab waste, about 16/21 of it; DrainBytes a quarter
// of the limit, the slab pool the limit plus a quarter) and 3/8 for
// caches (3/4 of it for blocks, 1/4 for chunk indexes).
const (
	// MinMemoryBytes is the smallest MemoryBytes: smaller values are
	// raised to it.
	MinMemoryBytes = 16 << 20
	// cacheEntryBytes is what one cached block costs: its 4 KiB and its
	// list node and map entry.
	cacheEntryBytes = cache.BlockSize + 128
	// chunkIndexBytes is one cached chunk index at its largest.
	chunkIndexBytes = chunk.MaxBlocks * 24
	// maxChunkIndexes bounds the chunk index cache without MemoryBytes.
	maxChunkIndexes = 1024
)

// chunkBufBytes is one drain chunk buffer at its largest.
var chunkBufBytes = chunk.Size(chunk.MaxBlocks)

// MemoryPlan is how a memory share divides (see Options.MemoryBytes).
type MemoryPlan struct {
	MaxPendingBytes   int64
	DrainBytes        int64
	SlabPoolBytes     int64
	UploadConcurrency int
	CacheBlocks       int
	ChunkIndexes      int
}

// PlanMemory divides a share of memory among a volume's holdings, as
// Options.MemoryBytes does when the other options are left zero.
// wasteSlabs is how many partly filled slabs the plan allows for (see
// above).
const wasteSlabs = 48

func PlanMemory(share int64) MemoryPlan {
	share = max(share, MinMemoryBytes)
	var p MemoryPlan
	p.UploadConcurrency = int(min(max(share/(32<<20), 1), 4))
	rest := share - int64(p.UploadConcurrency)*chunkBufBytes
	slabs := rest * 5 / 8
	// Pending data may pass the limit by one admission step (1/16 of it)
	// and wasteSlabs live segments may each waste a partly filled slab.
	p.MaxPendingBytes = (slabs - wasteSlabs*int64(slabSizeFor(slabs*16/17))) * 16 / 17 // slabs*16/17 bounds the limit: the slab size is not underestimated
	p.DrainBytes = p.MaxPendingBytes / 4
	p.SlabPoolBytes = p.MaxPendingBytes + p.MaxPendingBytes/4
	caches := rest - slabs
	p.CacheBlocks = int(caches * 3 / 4 / cacheEntryBytes)
	p.ChunkIndexes = int(min(max(caches/4/chunkIndexBytes, 16), maxChunkIndexes))
	return p
}

// fitMemory fills the options MemoryBytes derives and caps the cache.
func (o *Options) fitMemory() {
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	if o.MemoryBytes < MinMemoryBytes {
		log.Warn("memory share raised to the minimum", "memory_bytes", o.MemoryBytes, "minimum", MinMemoryBytes)
		o.MemoryBytes = MinMemoryBytes
	}
	p := PlanMemory(o.MemoryBytes)
	if o.UploadConcurrency <= 0 {
		o.UploadConcurrency = p.UploadConcurrency
	}
	if o.MaxPendingBytes <= 0 {
		o.MaxPendingBytes = p.MaxPendingBytes
	}
	if o.DrainBytes <= 0 {
		o.DrainBytes = min(p.DrainBytes, o.MaxPendingBytes)
	}
	if o.SlabPoolBytes == 0 {
		o.SlabPoolBytes = p.SlabPoolBytes
	}
	o.indexCap = p.ChunkIndexes
	asked := o.CacheBlocks
	if asked == 0 && o.CacheMemPercent > 0 {
		asked = cache.BlocksForMemPercent(o.CacheMemPercent, p.CacheBlocks)
	}
	switch {
	case asked == 0:
		o.CacheBlocks = p.CacheBlocks
	case asked > p.CacheBlocks:
		log.Warn("read cache capped to the volume's memory share", "asked_blocks", asked, "blocks", p.CacheBlocks, "memory_bytes", o.MemoryBytes)
		o.CacheBlocks = p.CacheBlocks
	default:
		o.CacheBlocks = asked
	}
	if o.CacheBlocks == 0 {
		o.CacheBlocks = -1 // a share too small for one block: no cache, not the default
	}
}

// chunkIndexes is how many chunk indexes the volume caches.
func (o *Options) chunkIndexes() int {
	if o.indexCap > 0 {
		return o.indexCap
	}
	return maxChunkIndexes
}
