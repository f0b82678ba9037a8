// Package metric holds the engine's measuring instruments: a latency
// histogram cheap enough for the I/O path (one atomic add per bucket and
// two for the sum and count, no lock, no allocation). It knows nothing of
// any exporter: a snapshot is plain data, which the node plugin converts.
package metric

import (
	"math"
	"sync/atomic"
	"time"
)

// LatencyBounds are the upper bounds, in seconds, of the buckets of every
// latency histogram: 100 µs to 60 s. A value above the last bound counts
// only in the total. They are part of the metrics channel's format
// (pkg/volmetrics): changing them changes its version.
var LatencyBounds = latencyBounds[:]

var latencyBounds = [...]float64{
	0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
	0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
}

// Histogram counts observed durations in the LatencyBounds buckets. The
// zero value is ready to use; it is safe for concurrent use.
type Histogram struct {
	buckets [len(latencyBounds) + 1]atomic.Uint64 // the last: above every bound
	count   atomic.Uint64
	sumNs   atomic.Uint64 // sum of observations in nanoseconds
}

// Observe adds one duration.
func (h *Histogram) Observe(d time.Duration) {
	if d < 0 {
		d = 0
	}
	s := d.Seconds()
	i := 0
	for i < len(latencyBounds) && s > latencyBounds[i] {
		i++
	}
	h.buckets[i].Add(1)
	h.sumNs.Add(uint64(d))
	h.count.Add(1)
}

// Since observes the time elapsed since start (for defer).
func (h *Histogram) Since(start time.Time) { h.Observe(time.Since(start)) }

// Snapshot is a histogram's state: Counts[i] observations were at most
// Bounds[i] seconds and above Bounds[i-1] (not cumulative); Count is all of
// them (including those above the last bound) and Sum their total in
// seconds.
type Snapshot struct {
	Bounds []float64 `json:"bounds"`
	Counts []uint64  `json:"counts"`
	Count  uint64    `json:"count"`
	Sum    float64   `json:"sum"`
}

// Snapshot reads the histogram. Concurrent observations may be partly
// included: Count is read first, so it never exceeds the buckets' total
// by more than the observations in flight.
func (h *Histogram) Snapshot() Snapshot {
	s := Snapshot{Bounds: latencyBounds[:], Counts: make([]uint64, len(latencyBounds))}
	s.Count = h.count.Load()
	s.Sum = float64(h.sumNs.Load()) / 1e9
	for i := range s.Counts {
		s.Counts[i] = h.buckets[i].Load()
	}
	return s
}

// Cumulative returns the counts of observations at most each bound
// (Prometheus's bucket form), capped at Count so the buckets never exceed
// the total even when read during observations.
func (s Snapshot) Cumulative() map[float64]uint64 {
	out := make(map[float64]uint64, len(s.Bounds))
	var c uint64
	for i, b := range s.Bounds {
		if i < len(s.Counts) {
			c += s.Counts[i]
		}
		out[b] = min(c, s.Count)
	}
	return out
}

// Valid reports whether a snapshot read from elsewhere is well formed:
// bounds increasing and finite, one count per bound.
func (s Snapshot) Valid() bool {
	if len(s.Counts) != len(s.Bounds) || math.IsNaN(s.Sum) || s.Sum < 0 {
		return false
	}
	for i, b := range s.Bounds {
		if math.IsNaN(b) || math.IsInf(b, 0) || (i > 0 && b <= s.Bounds[i-1]) {
			return false
		}
	}
	return true
}
