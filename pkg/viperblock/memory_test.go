package viperblock

import (
	"testing"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/wal"
)

// planBound is the most memory a volume opened with plan p holds for its
// data (see memory.go): chunk buffers, pending slabs with their waste and
// one admission step, cache blocks and chunk indexes.
func planBound(p MemoryPlan) int64 {
	step := max(min(p.MaxPendingBytes/16, 1<<20), wal.BlockRecordLen)
	slack := wasteSlabs * int64(slabSizeFor(p.MaxPendingBytes))
	return int64(p.UploadConcurrency)*chunkBufBytes + p.MaxPendingBytes + step + slack +
		int64(p.CacheBlocks)*cacheEntryBytes + int64(p.ChunkIndexes)*chunkIndexBytes
}

func TestPlanMemoryFitsTheShare(t *testing.T) {
	for _, share := range []int64{MinMemoryBytes, 24 << 20, 32 << 20, 40 << 20, 64 << 20, 100 << 20, 256 << 20, 1 << 30, 8 << 30} {
		p := PlanMemory(share)
		b := planBound(p)
		t.Logf("share %4d MiB: pending %6.1f MiB (drain at %5.1f, slabs of %4d KiB), cache %6d blocks, %4d chunk indexes, %d uploads: bound %6.1f MiB",
			share>>20, float64(p.MaxPendingBytes)/(1<<20), float64(p.DrainBytes)/(1<<20), slabSizeFor(p.MaxPendingBytes)>>10,
			p.CacheBlocks, p.ChunkIndexes, p.UploadConcurrency, float64(b)/(1<<20))
		if b > share {
			t.Errorf("share %d: the plan can hold %d bytes", share, b)
		}
		if p.MaxPendingBytes < 4<<20 || p.DrainBytes <= 0 || p.DrainBytes > p.MaxPendingBytes || p.CacheBlocks <= 0 || p.UploadConcurrency < 1 {
			t.Errorf("share %d: unusable plan %+v", share, p)
		}
	}
	if got, want := PlanMemory(1), PlanMemory(MinMemoryBytes); got != want {
		t.Errorf("a share below the minimum planned %+v, want the minimum's %+v", got, want)
	}
}

func TestSlabSizeFor(t *testing.T) {
	for _, c := range []struct {
		pending int64
		want    int
	}{{512 << 20, 4 << 20}, {1 << 40, 4 << 20}, {256 << 20, 2 << 20}, {16 << 20, 128 << 10}, {12 << 20, 64 << 10}, {1 << 20, 64 << 10}, {0, 64 << 10}} {
		if got := slabSizeFor(c.pending); got != c.want {
			t.Errorf("slabSizeFor(%d) = %d, want %d", c.pending, got, c.want)
		}
	}
}

func TestFitMemoryCapsTheCache(t *testing.T) {
	share := int64(64 << 20)
	p := PlanMemory(share)
	for _, c := range []struct {
		blocks int
		pct    float64
		want   int
	}{
		{0, 0, p.CacheBlocks},                  // derived
		{p.CacheBlocks * 10, 0, p.CacheBlocks}, // capped
		{100, 0, 100},                          // within the share: as asked
		{-1, 0, -1},                            // no cache stays none
		{0, 90, p.CacheBlocks},                 // a percentage of memory, capped
	} {
		o := Options{MemoryBytes: share, CacheBlocks: c.blocks, CacheMemPercent: c.pct, Logger: quietLogger()}
		o.setDefaults(nil)
		if o.CacheBlocks != c.want {
			t.Errorf("cache %d blocks / %v%%: got %d blocks, want %d", c.blocks, c.pct, o.CacheBlocks, c.want)
		}
		if o.MaxPendingBytes != p.MaxPendingBytes || o.DrainBytes != p.DrainBytes || o.SlabPoolBytes != p.SlabPoolBytes || o.UploadConcurrency != p.UploadConcurrency || o.chunkIndexes() != p.ChunkIndexes {
			t.Errorf("options %+v do not follow the plan %+v", o, p)
		}
	}
	// Explicit limits win over the share's (the caller owns them).
	o := Options{MemoryBytes: share, MaxPendingBytes: 8 << 20, Logger: quietLogger()}
	o.setDefaults(nil)
	if o.MaxPendingBytes != 8<<20 || o.DrainBytes > o.MaxPendingBytes {
		t.Errorf("explicit MaxPendingBytes: got %d (drain at %d)", o.MaxPendingBytes, o.DrainBytes)
	}
	// Without a share nothing changes.
	o = Options{}
	o.setDefaults(nil)
	if o.MaxPendingBytes != 512<<20 || o.CacheBlocks != 16384 || o.chunkIndexes() != maxChunkIndexes || o.SlabPoolBytes != 640<<20 {
		t.Errorf("defaults changed: %+v", o)
	}
}
