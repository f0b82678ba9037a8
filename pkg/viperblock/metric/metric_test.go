package metric

import (
	"testing"
	"time"
)

func TestHistogram(t *testing.T) {
	var h Histogram
	h.Observe(50 * time.Microsecond) // first bucket
	h.Observe(time.Millisecond)      // exactly a bound: that bucket
	h.Observe(3 * time.Second)       // (2.5, 5]
	h.Observe(2 * time.Minute)       // above every bound
	s := h.Snapshot()
	if !s.Valid() {
		t.Fatalf("snapshot not valid: %+v", s)
	}
	if s.Count != 4 {
		t.Fatalf("count %d, want 4", s.Count)
	}
	if want := 0.00005 + 0.001 + 3 + 120; s.Sum < want-1e-9 || s.Sum > want+1e-9 {
		t.Fatalf("sum %v, want %v", s.Sum, want)
	}
	c := s.Cumulative()
	for b, want := range map[float64]uint64{0.0001: 1, 0.0005: 1, 0.001: 2, 2.5: 2, 5: 3, 60: 3} {
		if c[b] != want {
			t.Errorf("bucket le=%v: %d, want %d", b, c[b], want)
		}
	}
}

func TestSnapshotValid(t *testing.T) {
	for _, s := range []Snapshot{
		{Bounds: []float64{1, 2}, Counts: []uint64{1}},
		{Bounds: []float64{2, 1}, Counts: []uint64{1, 1}},
		{Bounds: []float64{1}, Counts: []uint64{1}, Sum: -1},
	} {
		if s.Valid() {
			t.Errorf("%+v reported valid", s)
		}
	}
}
