package driver

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/metric"
	"github.com/viperblock/viperblock-csi/pkg/volmetrics"
)

// The engine's metrics of each staged volume, read from its nbdkit
// plugin's metrics socket (pkg/volmetrics) at scrape time, and the node's
// own. docs/metrics.md documents every one; keep the two in step (a test
// checks).

func engineDesc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("viperblock_"+name, help, append([]string{"volume_id"}, labels...), nil)
}

var (
	descVolUp        = engineDesc("volume_up", "1 while the volume's nbdkit plugin answers on its metrics socket, else 0 (the engine metrics below are then absent).")
	descVolOps       = engineDesc("volume_ops_total", "NBD requests the volume's server completed, by type (read, write, trim, zero, flush).", "op")
	descVolBytes     = engineDesc("volume_bytes_total", "Bytes covered by the NBD requests the volume's server completed, by type (read, write, trim, zero).", "op")
	descVolErrors    = engineDesc("volume_op_errors_total", "NBD requests the volume's server failed, by type.", "op")
	descCacheHits    = engineDesc("volume_cache_hits_total", "Blocks read from the engine's read cache.")
	descCacheMisses  = engineDesc("volume_cache_misses_total", "Blocks read that were not in the engine's read cache.")
	descFlush        = engineDesc("volume_flush_seconds", "Latency of the engine's FLUSH (from the request to durability, or failure).")
	descDrains       = engineDesc("volume_drains_total", "Successful drains of the WAL to the store.")
	descDrainErrors  = engineDesc("volume_drain_errors_total", "Failed drains of the WAL to the store (each is retried).")
	descDrainSeconds = engineDesc("volume_drain_seconds", "Duration of successful drains (chunk uploads, manifest commit, cleanup).")
	descDrainBytes   = engineDesc("volume_drain_bytes_total", "Chunk bytes uploaded to the store by drains.")
	descEnginePend   = engineDesc("volume_engine_pending_bytes", "WAL bytes the engine has not drained to the store yet, as the volume's server counts them.")
	descStoreReqs    = engineDesc("store_requests_total", "Object store requests made by the volume's server, by operation and result (ok includes the answers not found and precondition failed).", "op", "result")
	descStoreSecs    = engineDesc("store_request_seconds", "Latency of the volume server's object store requests (all attempts of one request), by operation.", "op")
	descStoreRetries = engineDesc("store_retries_total", "Attempts the object store client repeated inside one request, by operation.", "op")
	descLease        = engineDesc("volume_lease_renewals_total", "Renewals of the volume's ownership lease, by result (ok, error).", "result")
	descFenced       = engineDesc("volume_fenced", "1 while another owner has taken the volume over from this node's server (its writes fail), else 0.")
	descGCRuns       = engineDesc("volume_gc_runs_total", "Completed garbage collection (compaction) passes of the volume's server.")
	descGCBytes      = engineDesc("volume_gc_bytes_reclaimed_total", "Data bytes of superseded chunks the volume's server deleted from the store.")
	descStored       = engineDesc("volume_stored_bytes", "Data bytes the volume's own chunks referenced by its map hold in the store, as its server's compactor last counted them (0 before the first count).")
	descLive         = engineDesc("volume_live_bytes", "Live data bytes among volume_stored_bytes: stored / live is the dead space online compaction works on.")
	descCompactBytes = engineDesc("volume_compaction_bytes_written_total", "Chunk bytes online compaction uploaded (not in volume_drain_bytes_total).")
	descWALWritten   = engineDesc("volume_wal_bytes_written_total", "WAL record bytes the volume's server wrote to its WAL segment files.")
	descWALSkipped   = engineDesc("volume_wal_bytes_skipped_total", "WAL record bytes a drain committed to the store before any FLUSH or FUA asked for them to be durable, so never written to the WAL.")
	descGCChunks     = engineDesc("volume_gc_chunks_deleted_total", "Chunks the volume's server deleted from the store: superseded after a drain or compaction, or unreferenced and found by a GC pass.")

	descChunkCache = engineDesc("volume_chunk_cache_reads_total", "Chunk reads of the volume's server through its node-local chunk read cache, by result (hit: a cached chunk served it; miss: the store did).", "result")
	descChunkFills = engineDesc("volume_chunk_cache_fills_total", "Whole chunks the volume's server fetched into its node-local chunk read cache.")
	descChunkBytes = engineDesc("volume_chunk_cache_bytes", "Bytes the volume's node-local chunk read cache holds on the node's WAL disk.")

	descWALDiskAvail = prometheus.NewDesc("viperblock_node_wal_disk_avail_bytes", "Bytes available to the node plugin on the file system of --wal-dir.", nil, nil)
	descWALDiskSize  = prometheus.NewDesc("viperblock_node_wal_disk_size_bytes", "Size of the file system of --wal-dir.", nil, nil)
)

func describeEngine(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descVolUp, descVolOps, descVolBytes, descVolErrors, descCacheHits, descCacheMisses,
		descFlush, descDrains, descDrainErrors, descDrainSeconds, descDrainBytes, descEnginePend, descStoreReqs, descStoreSecs,
		descStoreRetries, descLease, descFenced, descGCRuns, descGCBytes, descGCChunks, descStored, descLive, descCompactBytes,
		descWALWritten, descWALSkipped, descChunkCache, descChunkFills, descChunkBytes, descWALDiskAvail, descWALDiskSize} {
		ch <- d
	}
}

// engineScrapeTimeout bounds the reading of every volume's metrics socket
// in one scrape.
const engineScrapeTimeout = 2 * time.Second

// collectEngine reads each staged volume's metrics socket, side by side.
func (c volumeCollector) collectEngine(ch chan<- prometheus.Metric, ids []volumeID) {
	ctx, cancel := context.WithTimeout(context.Background(), engineScrapeTimeout)
	defer cancel()
	type result struct {
		id volumeID
		s  *volmetrics.Snapshot
	}
	out := make(chan result, len(ids))
	sem := make(chan struct{}, 16)
	for _, id := range ids {
		go func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			s, err := volmetrics.Fetch(ctx, c.n.paths(id).Metrics)
			if err != nil {
				s = nil
			}
			out <- result{id, s}
		}()
	}
	for range ids {
		r := <-out
		v := r.id.String()
		// Fenced while its server ran (the engine says so), or while it
		// was down (the healer recorded it and left it closed).
		fenced := 0.0
		if st, ok, err := c.n.loadState(r.id); err == nil && ok && st.Fenced != "" || r.s != nil && r.s.Engine.Fenced {
			fenced = 1
		}
		ch <- prometheus.MustNewConstMetric(descFenced, prometheus.GaugeValue, fenced, v)
		if r.s == nil {
			ch <- prometheus.MustNewConstMetric(descVolUp, prometheus.GaugeValue, 0, v)
			continue
		}
		ch <- prometheus.MustNewConstMetric(descVolUp, prometheus.GaugeValue, 1, v)
		exportSnapshot(ch, v, r.s)
	}
}

// exportSnapshot converts one volume's snapshot.
func exportSnapshot(ch chan<- prometheus.Metric, v string, s *volmetrics.Snapshot) {
	counter := func(d *prometheus.Desc, x uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(x), append([]string{v}, labels...)...)
	}
	gauge := func(d *prometheus.Desc, x float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, x, append([]string{v}, labels...)...)
	}
	histogram := func(d *prometheus.Desc, h metric.Snapshot, labels ...string) {
		if !h.Valid() {
			return
		}
		ch <- prometheus.MustNewConstHistogram(d, h.Count, h.Sum, h.Cumulative(), append([]string{v}, labels...)...)
	}
	for _, op := range volmetrics.IOOps {
		io := s.IO[op]
		counter(descVolOps, io.Ops, op)
		if op != volmetrics.OpFlush {
			counter(descVolBytes, io.Bytes, op)
		}
		counter(descVolErrors, io.Errors, op)
	}
	e := &s.Engine
	counter(descCacheHits, e.CacheHits)
	counter(descCacheMisses, e.CacheMisses)
	histogram(descFlush, e.FlushSeconds)
	counter(descDrains, e.Drains)
	counter(descDrainErrors, e.DrainErrors)
	histogram(descDrainSeconds, e.DrainSeconds)
	counter(descDrainBytes, e.DrainBytes)
	gauge(descEnginePend, float64(e.PendingBytes))
	counter(descLease, e.LeaseRenewals, "ok")
	counter(descLease, e.LeaseRenewalErrors, "error")
	counter(descGCRuns, e.GCRuns)
	counter(descGCBytes, e.BytesReclaimed)
	counter(descGCChunks, e.ChunksReclaimed+e.GCChunksDeleted)
	gauge(descStored, float64(e.StoredBytes))
	gauge(descLive, float64(e.LiveBytes))
	counter(descCompactBytes, e.CompactionBytesWritten)
	counter(descChunkCache, e.ChunkCacheHits, "hit")
	counter(descChunkCache, e.ChunkCacheMisses, "miss")
	counter(descChunkFills, e.ChunkCacheFills)
	gauge(descChunkBytes, float64(e.ChunkCacheBytes))
	counter(descWALWritten, e.WALBytesWritten)
	counter(descWALSkipped, e.WALBytesSkipped)
	for op, st := range s.Store {
		counter(descStoreReqs, st.OK, op, "ok")
		counter(descStoreReqs, st.Errors, op, "error")
		counter(descStoreRetries, st.Retries, op)
		histogram(descStoreSecs, st.Seconds, op)
	}
}

// collectNode reports the WAL file system's space.
func (c volumeCollector) collectNode(ch chan<- prometheus.Metric) {
	var st unix.Statfs_t
	if c.n.opts.WALDir == "" || unix.Statfs(c.n.opts.WALDir, &st) != nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(descWALDiskAvail, prometheus.GaugeValue, float64(st.Bavail)*float64(st.Bsize))
	ch <- prometheus.MustNewConstMetric(descWALDiskSize, prometheus.GaugeValue, float64(st.Blocks)*float64(st.Bsize))
}
