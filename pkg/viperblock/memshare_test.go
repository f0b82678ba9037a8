package viperblock_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/internal/testutil"
	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

// A volume opened with a memory share holds its pending data within the
// share's limit while writers push far more than it through large
// requests, with the backend down so nothing drains: the writers wait, none
// fails, and all finish once the backend returns.
func TestMemoryShareWritersWait(t *testing.T) {
	const share = 32 << 20
	plan := vb.PlanMemory(share)
	fs := &flakyStore{Store: backend.NewMem()}
	o := vb.Options{WALDir: t.TempDir(), MemoryBytes: share, DrainInterval: 20 * time.Millisecond, Logger: quiet()}
	const size = 64 << 20
	v := mustCreate(t, fs, "v", size, o)
	defer v.Close()
	fs.setDown(true)

	// 8 writers, each writing its own 8 MiB region in 1 MiB requests,
	// some of them unaligned: 64 MiB in all, 4 times the pending limit.
	const writers, region, req = 8, size / 8, 1 << 20
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	want := make([]byte, size)
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), byte(seed >> 24)})
	r.Read(want) //nolint:errcheck // never fails
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			base := int64(w) * region
			for off := int64(0); off < region; {
				n := int64(req)
				if w%2 == 1 && off == 0 {
					n = req - 1000 // the rest of this region's requests are unaligned
				}
				n = min(n, region-off)
				if _, err := v.WriteAt(want[base+off:base+off+n], base+off); err != nil {
					errs <- fmt.Errorf("writer %d at %d: %w", w, off, err)
					return
				}
				off += n
			}
		}(w)
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()

	// The writers stall at the limit.
	var peak vb.Stats
	testutil.Eventually(t, time.Minute, "the writers to stall at the pending limit", func() (bool, error) {
		s := v.Stats()
		return s.PendingBytes >= plan.MaxPendingBytes && s.DrainErrors > 0, fmt.Errorf("%d pending of %d, %d drain errors", s.PendingBytes, plan.MaxPendingBytes, s.DrainErrors)
	})
	time.Sleep(200 * time.Millisecond) // not synchronisation: the writers must stay put meanwhile
	select {
	case <-done:
		t.Fatal("the writers finished with the backend down and 4 times the pending limit written")
	default:
	}
	peak = v.Stats()
	step := min(plan.MaxPendingBytes/16, 1<<20)
	t.Logf("stalled: %.1f MiB pending (limit %.1f MiB), %.1f MiB of slabs", float64(peak.PendingBytes)/(1<<20), float64(plan.MaxPendingBytes)/(1<<20), float64(peak.SlabBytes)/(1<<20))
	if peak.PendingBytes > plan.MaxPendingBytes+step {
		t.Errorf("%d bytes pending: more than the limit %d and one admission step %d", peak.PendingBytes, plan.MaxPendingBytes, step)
	}
	if peak.SlabBytes > plan.MaxPendingBytes+step+wasteSlabs*int64(slabSize(plan.MaxPendingBytes)) {
		t.Errorf("%d bytes of slabs for %d pending", peak.SlabBytes, peak.PendingBytes)
	}

	fs.setDown(false)
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		t.Fatal("writers still blocked 2 minutes after the backend returned")
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	s := v.Stats()
	if s.SlabBytes > plan.SlabPoolBytes+wasteSlabs*int64(slabSize(plan.MaxPendingBytes)) {
		t.Errorf("%d bytes of slabs after the writes; the pool keeps at most %d", s.SlabBytes, plan.SlabPoolBytes)
	}
	got := make([]byte, size)
	if _, err := v.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the volume does not read back what the writers wrote")
	}
}

// slabSize mirrors the engine's slab size for a pending limit (log.go).
func slabSize(pending int64) int {
	n := 4 << 20
	for n > 64<<10 && int64(n) > pending/128 {
		n >>= 1
	}
	return n
}

// wasteSlabs mirrors the partly filled slabs the memory plan allows for
// (memory.go).
const wasteSlabs = 48
