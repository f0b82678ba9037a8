package vbplugin

import (
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/volmetrics"
)

// NBD request types counted by ioCounters, in volmetrics.IOOps order.
const (
	ioRead = iota
	ioWrite
	ioTrim
	ioZero
	ioFlush
	numIO
)

// ioCounters count the NBD requests served, by type: the requests as
// clients sent them (a trim and a zero are the same engine call).
type ioCounters [numIO]struct {
	ops, bytes, errors atomic.Uint64
}

func (c *ioCounters) done(op, n int, err error) {
	if err != nil {
		c[op].errors.Add(1)
		return
	}
	c[op].ops.Add(1)
	c[op].bytes.Add(uint64(n))
}

// metricsServer serves the volume's measurements on the metrics= socket.
type metricsServer struct {
	l    net.Listener
	srv  *http.Server
	path string
}

// startMetrics starts serving metrics= (once the volume is open, after
// nbdkit has set up its file descriptors). A failure is logged: the
// volume is served without measurements, and the node reports it down.
func (p *Plugin) startMetrics() {
	if p.Cfg.MetricsSocket == "" || p.metrics != nil {
		return
	}
	l, err := volmetrics.Listen(p.Cfg.MetricsSocket)
	if err != nil {
		p.log.Warn("cannot serve metrics", "volume", p.Cfg.Volume, "socket", p.Cfg.MetricsSocket, "err", err)
		return
	}
	p.metrics = &metricsServer{l: l, srv: volmetrics.Serve(l, p.Snapshot), path: p.Cfg.MetricsSocket}
}

func (p *Plugin) stopMetrics() {
	if m := p.metrics; m != nil {
		m.srv.Close()
		os.Remove(m.path)
		p.metrics = nil
	}
}

// Snapshot is the volume's measurements, in the volmetrics format.
func (p *Plugin) Snapshot() volmetrics.Snapshot {
	s := volmetrics.Snapshot{Version: volmetrics.Version, Volume: p.Cfg.Volume, Time: time.Now().UTC(),
		IO: map[string]volmetrics.IO{}, Store: map[string]volmetrics.StoreOp{}}
	for i, name := range volmetrics.IOOps {
		c := &p.io[i]
		s.IO[name] = volmetrics.IO{Ops: c.ops.Load(), Bytes: c.bytes.Load(), Errors: c.errors.Load()}
	}
	if p.storeStats != nil {
		for op, st := range p.storeStats.Snapshot() {
			s.Store[op] = volmetrics.StoreOp{OK: st.OK, Errors: st.Errors, Retries: st.Retries, Seconds: st.Seconds}
		}
	}
	if v := p.cur.Load(); v != nil {
		st := v.Stats()
		m := st.Metrics
		s.Engine = volmetrics.Engine{
			CacheHits: st.CacheHits, CacheMisses: st.CacheMisses,
			Drains: st.Drains, DrainErrors: st.DrainErrors, DrainBytes: st.BytesDrained, ChunksPut: st.ChunksPut,
			PendingBytes: st.PendingBytes, Fenced: st.Fenced,
			FlushSeconds: m.FlushSeconds, DrainSeconds: m.DrainSeconds,
			LeaseRenewals: m.LeaseRenewals, LeaseRenewalErrors: m.LeaseRenewalErrors,
			GCRuns: m.GCRuns, GCChunksDeleted: m.GCChunksDeleted,
			ChunksReclaimed: m.ChunksReclaimed, BytesReclaimed: m.BytesReclaimed,
			StoredBytes: st.ChunkBlocksStored * vb.BlockSize, LiveBytes: st.ChunkBlocksLive * vb.BlockSize,
			CompactionBytesWritten: st.GCBytesWritten,
			ChunkCacheHits:         st.ReadCache.Hits, ChunkCacheMisses: st.ReadCache.Misses,
			ChunkCacheFills: st.ReadCache.Fills, ChunkCacheBytes: st.ReadCache.Bytes,
			WALBytesWritten: st.WALBytesWritten, WALBytesSkipped: st.WALBytesSkipped,
			BackendReads: st.BackendReads, StoreLogPuts: st.StoreLogPuts, Epoch: st.Epoch,
			ReplayedWALRecords: st.Replayed, ResolvedCommits: st.ResolvedCommits,
		}
	}
	return s
}
