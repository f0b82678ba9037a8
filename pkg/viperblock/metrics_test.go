package viperblock_test

import (
	"context"
	"testing"
	"time"

	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

// TestMetrics: flushes, drains, superseded chunks, GC passes and lease
// renewals show in Stats().Metrics.
func TestMetrics(t *testing.T) {
	ctx := context.Background()
	s := backend.NewMem()
	o := opts(t)
	o.LeaseDuration = vb.MinLeaseDuration
	v := mustCreate(t, s, "vol", 16<<20, o)
	defer v.Close()
	buf := make([]byte, 1<<20)
	for i := range 3 {
		buf[0] = byte(i + 1)
		if _, err := v.WriteAt(buf, 0); err != nil {
			t.Fatal(err)
		}
		if err := v.Flush(); err != nil {
			t.Fatal(err)
		}
		if err := v.Drain(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := v.GC(ctx); err != nil {
		t.Fatal(err)
	}
	m := v.Stats().Metrics
	if m.FlushSeconds.Count < 3 || !m.FlushSeconds.Valid() {
		t.Errorf("flush histogram %+v: want at least 3 observations", m.FlushSeconds)
	}
	if m.DrainSeconds.Count < 3 || m.DrainSeconds.Sum <= 0 {
		t.Errorf("drain histogram %+v: want at least 3 observations", m.DrainSeconds)
	}
	// Each drain rewrote block 0..255: the earlier chunks are superseded.
	if m.ChunksReclaimed < 2 || m.BytesReclaimed < 2<<20 {
		t.Errorf("reclaimed %d chunks, %d bytes: want at least 2 chunks of 1 MiB", m.ChunksReclaimed, m.BytesReclaimed)
	}
	if m.GCRuns < 1 {
		t.Errorf("GC runs %d, want at least the explicit pass", m.GCRuns)
	}
	deadline := time.Now().Add(10 * time.Second)
	for v.Stats().Metrics.LeaseRenewals == 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if m := v.Stats().Metrics; m.LeaseRenewals == 0 || m.LeaseFailing {
		t.Errorf("lease renewals %d (failing %v): want some, none failing", m.LeaseRenewals, m.LeaseFailing)
	}
}
