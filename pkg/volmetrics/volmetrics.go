// Package volmetrics is the channel that carries a volume server's
// measurements (the engine's, its store client's, its NBD requests') out of
// the nbdkit process serving the volume to the node plugin, which exports
// them to Prometheus. The server side (the nbdkit plugin) knows nothing of
// Prometheus; the node plugin converts at scrape time.
//
// # Channel, version 1
//
// The volume server listens on a Unix stream socket whose path the node
// passes as the plugin parameter metrics=PATH (mode 0600, removed when the
// server exits; a stale socket file is replaced). It speaks HTTP/1.1:
//
//	GET /v1/snapshot   200, Content-Type: application/json, one Snapshot
//	anything else      404 (other methods: 405)
//
// The node asks once per Prometheus scrape, with a short timeout; a server
// that does not answer is reported as down (viperblock_volume_up 0).
//
// The body is one JSON object (the field names below are the format; the
// Go types document them):
//
//	{
//	  "version": 1,                     format version (Version)
//	  "volume": "pvc-1234",             the engine's volume name
//	  "time": "2026-01-02T03:04:05Z",   when the snapshot was taken (RFC 3339)
//	  "io": {                           NBD requests served, by type (IO)
//	    "read": {"ops": 10, "bytes": 40960, "errors": 0},
//	    "write": {...}, "trim": {...}, "zero": {...}, "flush": {...}
//	  },
//	  "engine": {...},                  the engine's counters (Engine)
//	  "store": {                        store requests by operation (StoreOp)
//	    "get": {"ok": 5, "errors": 0, "retries": 1, "seconds": HISTOGRAM},
//	    "put": ..., "put_if_match": ..., "put_if_none_match": ...,
//	    "list": ..., "delete": ..., "sync": ...
//	  }
//	}
//
// A HISTOGRAM is {"bounds": [upper bounds in seconds, increasing],
// "counts": [observations in each bucket, not cumulative, one per bound],
// "count": all observations, including those above the last bound, "sum":
// their total in seconds}. Counters count from the server's start (they
// reset when nbdkit restarts; Prometheus handles counter resets).
//
// Compatibility: fields are only ever added within a version; a reader
// ignores fields it does not know and treats a missing one as zero. A
// change of meaning or removal makes a new version, served at a new path
// (/v2/...), and the server keeps serving the old one for as long as nodes
// that read it may run. Fetch refuses a body whose version it does not
// know.
package volmetrics

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/metric"
)

// Version is the snapshot format this package writes and reads.
const Version = 1

// Path is the HTTP path of the version 1 snapshot.
const Path = "/v1/snapshot"

// Snapshot is one reading of a volume server.
type Snapshot struct {
	Version int                `json:"version"`
	Volume  string             `json:"volume"`
	Time    time.Time          `json:"time"`
	IO      map[string]IO      `json:"io"` // by IOOps
	Engine  Engine             `json:"engine"`
	Store   map[string]StoreOp `json:"store"` // by backend.Ops
}

// NBD request types, the keys of Snapshot.IO.
const (
	OpRead  = "read"
	OpWrite = "write"
	OpTrim  = "trim"
	OpZero  = "zero"
	OpFlush = "flush"
)

// IOOps lists the NBD request types.
var IOOps = []string{OpRead, OpWrite, OpTrim, OpZero, OpFlush}

// IO counts the NBD requests of one type: Ops those that succeeded, Bytes
// the bytes they covered (0 for flush), Errors those that failed.
type IO struct {
	Ops    uint64 `json:"ops"`
	Bytes  uint64 `json:"bytes"`
	Errors uint64 `json:"errors"`
}

// Engine is the engine's view of the volume (vb.Stats).
type Engine struct {
	CacheHits    uint64 `json:"cache_hits"`    // blocks read from the read cache
	CacheMisses  uint64 `json:"cache_misses"`  // blocks that were not in it
	Drains       uint64 `json:"drains"`        // successful drains to the store
	DrainErrors  uint64 `json:"drain_errors"`  // failed drains
	DrainBytes   uint64 `json:"drain_bytes"`   // chunk bytes uploaded by drains
	ChunksPut    uint64 `json:"chunks_put"`    // chunks uploaded by drains
	PendingBytes int64  `json:"pending_bytes"` // WAL bytes not yet in the store
	// Fenced: another owner took the volume over; writes fail.
	Fenced             bool            `json:"fenced"`
	FlushSeconds       metric.Snapshot `json:"flush_seconds"`
	DrainSeconds       metric.Snapshot `json:"drain_seconds"`
	LeaseRenewals      uint64          `json:"lease_renewals"`
	LeaseRenewalErrors uint64          `json:"lease_renewal_errors"`
	GCRuns             uint64          `json:"gc_runs"`
	GCChunksDeleted    uint64          `json:"gc_chunks_deleted"`
	ChunksReclaimed    uint64          `json:"chunks_reclaimed"`
	BytesReclaimed     uint64          `json:"bytes_reclaimed"`
	// StoredBytes and LiveBytes: data bytes the volume's own referenced
	// chunks hold and the live bytes among them (vb.Stats
	// ChunkBlocksStored, ChunkBlocksLive); CompactionBytesWritten: chunk
	// bytes compaction uploaded. Added within version 1: an older
	// server's snapshot leaves them zero.
	StoredBytes            uint64 `json:"stored_bytes,omitempty"`
	LiveBytes              uint64 `json:"live_bytes,omitempty"`
	CompactionBytesWritten uint64 `json:"compaction_bytes_written,omitempty"`
	// ChunkCache*: the node-local chunk read cache (vb.Stats ReadCache):
	// reads served by a cached chunk, reads of chunks not cached, whole
	// chunks fetched into it, and the bytes it holds. Added within
	// version 1: an older server's snapshot leaves them zero.
	ChunkCacheHits   uint64 `json:"chunk_cache_hits,omitempty"`
	ChunkCacheMisses uint64 `json:"chunk_cache_misses,omitempty"`
	ChunkCacheFills  uint64 `json:"chunk_cache_fills,omitempty"`
	ChunkCacheBytes  int64  `json:"chunk_cache_bytes,omitempty"`
	// WALBytesWritten: WAL record bytes written to segment files;
	// WALBytesSkipped: record bytes a drain committed before anything
	// asked for them to be durable, never written to the WAL (vb.Stats).
	// Added within version 1: an older server's snapshot leaves them zero.
	WALBytesWritten    uint64 `json:"wal_bytes_written,omitempty"`
	WALBytesSkipped    uint64 `json:"wal_bytes_skipped,omitempty"`
	BackendReads       uint64 `json:"backend_reads"` // ranged reads of chunk data and indexes
	StoreLogPuts       uint64 `json:"store_log_puts"`
	Epoch              uint64 `json:"epoch"`
	ReplayedWALRecords uint64 `json:"replayed_wal_records"`
	ResolvedCommits    uint64 `json:"resolved_commits"`
}

// StoreOp counts the store requests of one operation (backend.OpStats).
type StoreOp struct {
	OK      uint64          `json:"ok"`
	Errors  uint64          `json:"errors"`
	Retries uint64          `json:"retries"`
	Seconds metric.Snapshot `json:"seconds"`
}

// Listen removes a stale socket at path and listens there, mode 0600.
func Listen(path string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		os.Remove(path)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// Handler serves the snapshots snap returns.
func Handler(snap func() Snapshot) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc(Path, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		s := snap()
		s.Version = Version
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(s)
	})
	return mux
}

// Serve serves snapshots on l until it is closed; the returned server's
// Close stops it.
func Serve(l net.Listener, snap func() Snapshot) *http.Server {
	srv := &http.Server{Handler: Handler(snap), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(l)
	return srv
}

// ErrVersion: the server answered with a format this reader does not know.
var ErrVersion = errors.New("volmetrics: unknown snapshot version")

// maxBody bounds a snapshot's size.
const maxBody = 1 << 20

// Fetch asks the server on the socket at path for a snapshot.
func Fetch(ctx context.Context, path string) (*Snapshot, error) {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://volume"+Path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("volmetrics: %s: %s", path, resp.Status)
	}
	var s Snapshot
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxBody)).Decode(&s); err != nil {
		return nil, fmt.Errorf("volmetrics: %s: %w", path, err)
	}
	if s.Version != Version {
		return nil, fmt.Errorf("%w: %d (this reader knows %d)", ErrVersion, s.Version, Version)
	}
	return &s, nil
}
