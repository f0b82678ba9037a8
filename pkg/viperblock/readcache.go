package viperblock

import (
	"context"
	"errors"
	"path/filepath"
	"strings"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/blockmap"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/diskcache"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/vfs"
)

// The chunk read cache (Options.ReadCacheBytes) keeps whole copies of the
// chunks a writable open reads on node-local disk (package diskcache): the
// first read of a chunk goes to the store for its own bytes and fetches the
// whole chunk in the background; later reads of any block of it are local.
// Chunks are immutable and their keys never reused (a chunk id holds the
// epoch that wrote it), and the cache lives only as long as the open, so a
// copy is never stale. Blocks read from a copy are verified like any other.
//
// It starts with the volume's background work (Start), since its fills open
// files and connections, and stops at Close.

// readCacheDir is where the open's chunk read cache lives.
func (v *Volume) readCacheDir() string {
	if v.opts.ReadCacheDir != "" {
		return v.opts.ReadCacheDir
	}
	return filepath.Join(v.wdir, "readcache")
}

// isChunkKey reports whether key names a chunk.
func isChunkKey(key string) bool { return strings.Contains(key, "/chunks/") }

// startReadCache starts the chunk read cache when one is configured.
func (v *Volume) startReadCache() {
	if v.opts.ReadCacheBytes <= 0 || v.opts.ReadOnly || v.wdir == "" {
		return
	}
	if v.fs != vfs.Default {
		v.log.Debug("no chunk read cache: the WAL is not on the operating system's filesystem")
		return
	}
	c, err := diskcache.New(v.store, diskcache.Options{
		Dir: v.readCacheDir(), MaxBytes: v.opts.ReadCacheBytes, Cacheable: isChunkKey,
		Fills: v.opts.UploadConcurrency, Logger: v.log,
	})
	if err != nil {
		v.log.Warn("no chunk read cache", "err", err)
		return
	}
	v.rc.Store(c)
}

// stopReadCache stops the chunk read cache and removes its copies.
func (v *Volume) stopReadCache() {
	if c := v.rc.Swap(nil); c != nil {
		if err := c.Close(); err != nil {
			v.log.Warn("could not remove the chunk read cache", "dir", c.Dir(), "err", err)
		}
	}
}

// noReadCache marks a context whose chunk reads bypass the read cache.
type noReadCache struct{}

// retryUncached reports whether a chunk read that failed with err should be
// tried again from the store: it failed verification (ErrCorrupt) while
// the read cache may have served it. The cached copy is dropped first; the
// returned context bypasses the cache, so a chunk that is damaged in the
// store itself is still reported as corrupt.
func (v *Volume) retryUncached(ctx context.Context, key string, err error) (context.Context, bool) {
	if !errors.Is(err, ErrCorrupt) || v.rc.Load() == nil || ctx.Value(noReadCache{}) != nil {
		return ctx, false
	}
	v.log.Warn("a chunk read through the read cache failed verification; reading it from the store", "chunk", key, "err", err)
	v.forgetChunk(key)
	return context.WithValue(ctx, noReadCache{}, true), true
}

// fetchRun reads a run of missed blocks of one chunk (fetchRunOnce), again
// from the store when the cached copy proves bad.
func (v *Volume) fetchRun(ctx context.Context, run []miss) error {
	err := v.fetchRunOnce(ctx, run)
	if err == nil {
		return nil
	}
	if rctx, retry := v.retryUncached(ctx, v.chunkKeyRef(blockmap.ChunkRef{Vol: run[0].key.Vol, ID: run[0].key.Chunk}), err); retry {
		err = v.fetchRunOnce(rctx, run)
	}
	return err
}

// readChunkIndex reads and verifies the index of chunk id, of n blocks
// (readChunkIndexOnce), again from the store when the cached copy proves
// bad, and keeps the chunk's key with it for the reads that follow.
func (v *Volume) readChunkIndex(ctx context.Context, id blockmap.ChunkRef, n uint32) (*chunkIdx, error) {
	key := v.chunkKeyRef(id)
	e, err := v.readChunkIndexOnce(ctx, id, n)
	if rctx, retry := v.retryUncached(ctx, key, err); retry {
		e, err = v.readChunkIndexOnce(rctx, id, n)
	}
	if err != nil {
		return nil, err
	}
	e.key = key
	return e, nil
}

// readChunkRange fills p from chunk key at off, through the read cache
// when there is one.
func (v *Volume) readChunkRange(ctx context.Context, key string, off int64, p []byte) error {
	if c := v.rc.Load(); c != nil && ctx.Value(noReadCache{}) == nil {
		return c.ReadRange(ctx, key, off, p)
	}
	return backend.ReadRange(ctx, v.store, key, off, p)
}

// getChunkRange is readChunkRange into a new buffer of n bytes.
func (v *Volume) getChunkRange(ctx context.Context, key string, off, n int64) ([]byte, error) {
	if c := v.rc.Load(); c != nil && ctx.Value(noReadCache{}) == nil {
		return c.GetRange(ctx, key, off, n)
	}
	return v.store.GetRange(ctx, key, off, n)
}

// forgetChunk drops a deleted chunk's cached copy.
func (v *Volume) forgetChunk(key string) {
	if c := v.rc.Load(); c != nil {
		c.Forget(key)
	}
}

// readCacheStats returns the read cache's counters (zero without one).
func (v *Volume) readCacheStats() diskcache.Stats {
	if c := v.rc.Load(); c != nil {
		return c.Stats()
	}
	return diskcache.Stats{}
}
