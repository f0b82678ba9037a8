package viperblock

import (
	"sync/atomic"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/blockmap"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/metric"
)

// engineMetrics are the counters and histograms an exporter needs beyond
// the plain counters: latencies, lease renewals and GC work. Every update
// is an atomic add, cheap enough for the I/O path; the engine knows
// nothing of the exporters that read them (see Stats.Metrics).
type engineMetrics struct {
	flush metric.Histogram // Flush calls, from entry to durability
	drain metric.Histogram // successful drains, from start to commit and cleanup

	leaseRenewals, leaseRenewalErrors atomic.Uint64

	gcRuns            atomic.Uint64 // completed Volume.GC passes
	chunksReclaimed   atomic.Uint64 // superseded chunks deleted after a drain
	bytesReclaimed    atomic.Uint64 // their data bytes
	leaseRenewalState atomic.Bool   // the last renewal failed (for Metrics.LeaseFailing)
}

// Metrics are the engine's measurements of one open volume, beyond the
// counters in Stats. Counters count since the open.
type Metrics struct {
	// FlushSeconds: the latency of Flush calls, whether they succeeded
	// or failed.
	FlushSeconds metric.Snapshot
	// DrainSeconds: the duration of successful drains (upload of the
	// chunks, manifest commit, cleanup).
	DrainSeconds metric.Snapshot
	// LeaseRenewals and LeaseRenewalErrors count the ownership lease's
	// renewals that succeeded and failed; LeaseFailing is set while the
	// last renewal failed.
	LeaseRenewals, LeaseRenewalErrors uint64
	LeaseFailing                      bool
	// GCRuns counts compaction commits (Stats.GCRuns) and completed
	// explicit Volume.GC passes; GCChunksDeleted the unreferenced chunks
	// garbage sweeps deleted (Stats.GCChunksDeleted).
	GCRuns, GCChunksDeleted uint64
	// ChunksReclaimed counts this open's chunks deleted once a drain or a
	// compaction superseded them, and BytesReclaimed their data bytes.
	ChunksReclaimed, BytesReclaimed uint64
}

func (m *engineMetrics) snapshot() Metrics {
	return Metrics{
		FlushSeconds: m.flush.Snapshot(), DrainSeconds: m.drain.Snapshot(),
		LeaseRenewals: m.leaseRenewals.Load(), LeaseRenewalErrors: m.leaseRenewalErrors.Load(),
		LeaseFailing:    m.leaseRenewalState.Load(),
		GCRuns:          m.gcRuns.Load(),
		ChunksReclaimed: m.chunksReclaimed.Load(), BytesReclaimed: m.bytesReclaimed.Load(),
	}
}

// leaseRenewed records the outcome of one lease renewal.
func (m *engineMetrics) leaseRenewed(err error) {
	if err != nil {
		m.leaseRenewalErrors.Add(1)
	} else {
		m.leaseRenewals.Add(1)
	}
	m.leaseRenewalState.Store(err != nil)
}

// gcDone records a completed GC pass.
func (m *engineMetrics) gcDone(err error) {
	if err == nil {
		m.gcRuns.Add(1)
	}
}

// chunkDeleted records the deletion of a superseded chunk of this volume.
func (v *Volume) chunkDeleted(id blockmap.ChunkRef) {
	v.idx.mu.Lock()
	n := v.idx.sizes[id]
	v.idx.mu.Unlock()
	v.stats.m.chunksReclaimed.Add(1)
	v.stats.m.bytesReclaimed.Add(uint64(n) * BlockSize)
	v.forgetChunk(v.chunkKeyRef(id))
}
