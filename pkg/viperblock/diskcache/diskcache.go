// Package diskcache keeps whole copies of immutable objects of a remote
// object store on node-local disk, so that reads of an object after its
// first miss are served by the local filesystem instead of one store
// request each.
//
// A read of a cacheable object that is not cached goes to the store for the
// range asked, unless a fetch of that object is in flight: then it waits
// for the copy, which spares the store a request per read while a hot
// object is on its way. A second miss of an object within the last few
// thousand misses starts a background fetch of all of it, if one of the
// Fills fetch slots is free; one read alone never does, so reads scattered
// over a large volume are not each multiplied into a whole fetch. The fetched copy is written to a temporary file, renamed into the
// cache directory and served from then on with positioned reads. Copies are
// evicted least recently used first to keep the cache under its size.
//
// The cache holds objects exactly as stored (chunks sealed by the engine
// stay sealed) and trusts nothing about them: the engine verifies every
// block it reads, wherever it comes from. It is only for objects that are
// never rewritten under the same key while the cache lives. It is private
// to one user: New empties the directory, and Close removes it, so a crash
// or a restart never serves a copy from an earlier life.
//
// # On disk
//
// One file per cached object, named by the lower-case hex SHA-256 of its
// key, holding the object's bytes and nothing else; temporary files end in
// ".tmp". Neither survives New.
package diskcache

import (
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

// Options configure a Cache.
type Options struct {
	// Dir is the cache directory; it is created, and emptied if it exists.
	Dir string
	// MaxBytes bounds the bytes of cached copies (required, > 0).
	MaxBytes int64
	// Cacheable reports whether a key names an immutable object worth
	// caching; other keys are read from the store only.
	Cacheable func(key string) bool
	// Fills is how many whole-object fetches run at once (default 4).
	Fills int
	// Misses is how many reads of an uncached object, lately, start the
	// fetch of all of it (default 2: one read alone never fetches an
	// object, so scattered reads over a large volume are not each
	// multiplied into an object fetch; 1: the first miss).
	Misses int
	// MinFree is the space a fill leaves free on the cache's filesystem
	// (default: 10% of it, at least 256 MiB): a fill that would go below
	// is skipped, so the cache never takes the room a WAL on the same
	// disk needs.
	MinFree int64
	// MaxOpen bounds the cached files kept open (default 256).
	MaxOpen int
	// Logger receives fetch failures at debug level (default slog.Default()).
	Logger *slog.Logger
}

// Stats are a cache's counters since New.
type Stats struct {
	Hits       uint64 // reads served from a local copy
	Misses     uint64 // reads of cacheable objects served by the store
	Fills      uint64 // whole objects fetched and cached
	FillBytes  uint64 // bytes fetched by fills
	FillErrors uint64 // fills that failed (the object stays uncached)
	Evictions  uint64 // copies evicted to stay under MaxBytes
	Bytes      int64  // bytes cached now
	Objects    int    // objects cached now
}

// Cache reads immutable objects of a store through local copies. It is safe
// for concurrent use.
type Cache struct {
	store     backend.Store
	dir       string
	max       int64
	cacheable func(string) bool
	log       *slog.Logger
	sem       chan struct{}
	maxOpen   int
	tmpSeq    atomic.Uint64

	mu           sync.Mutex
	entries      map[string]*entry
	lru          list.List // of *entry, most recently used at the front
	used         int64
	open         int
	filling      map[string]*fillState
	ghost        map[string]int // recent misses of uncached keys (noteMissLocked)
	ghostQ       []string       // ghost's keys, oldest first
	missesToFill int
	minFree      int64
	closed       bool
	fills        sync.WaitGroup
	ctx          context.Context
	cancel       context.CancelFunc
	hits         atomic.Uint64
	misses       atomic.Uint64
	nfill        atomic.Uint64
	fillB        atomic.Uint64
	fillErr      atomic.Uint64
	evicted      atomic.Uint64
}

// fillState is a whole-object fetch under way.
type fillState struct {
	done chan struct{} // closed when it ends, cached or not
}

// entry is one cached copy.
type entry struct {
	key  string
	path string
	size int64
	elem *list.Element
	f    *os.File // open while readers or recent use need it; nil otherwise
	refs int      // readers using f
	gone bool     // evicted or dropped: close f when refs reach zero
}

// New empties (or creates) opts.Dir and returns a cache in front of store.
func New(store backend.Store, opts Options) (*Cache, error) {
	if opts.MaxBytes <= 0 {
		return nil, fmt.Errorf("diskcache: size %d must be positive", opts.MaxBytes)
	}
	if opts.Dir == "" || opts.Cacheable == nil {
		return nil, errors.New("diskcache: a directory and a Cacheable function are required")
	}
	if opts.Fills <= 0 {
		opts.Fills = 4
	}
	if opts.Misses <= 0 {
		opts.Misses = 2
	}
	if opts.MaxOpen <= 0 {
		opts.MaxOpen = 256
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if err := os.RemoveAll(opts.Dir); err != nil {
		return nil, fmt.Errorf("diskcache: empty %s: %w", opts.Dir, err)
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("diskcache: %w", err)
	}
	if opts.MinFree <= 0 {
		opts.MinFree = 256 << 20
		var st syscall.Statfs_t
		if err := syscall.Statfs(opts.Dir, &st); err == nil {
			opts.MinFree = max(opts.MinFree, int64(st.Blocks)*int64(st.Bsize)/10)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Cache{
		store: store, dir: opts.Dir, max: opts.MaxBytes, cacheable: opts.Cacheable,
		log: opts.Logger, sem: make(chan struct{}, opts.Fills), maxOpen: opts.MaxOpen,
		entries: map[string]*entry{}, filling: map[string]*fillState{}, ghost: map[string]int{}, missesToFill: opts.Misses, minFree: opts.MinFree, ctx: ctx, cancel: cancel,
	}, nil
}

// Dir is the cache's directory.
func (c *Cache) Dir() string { return c.dir }

// Stats returns the cache's counters.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	b, n := c.used, len(c.entries)
	c.mu.Unlock()
	return Stats{
		Hits: c.hits.Load(), Misses: c.misses.Load(), Fills: c.nfill.Load(), FillBytes: c.fillB.Load(),
		FillErrors: c.fillErr.Load(), Evictions: c.evicted.Load(), Bytes: b, Objects: n,
	}
}

// ReadRange fills p with the bytes of key from off, from a local copy when
// there is one, else from the store (starting a fill of the whole object).
// Errors are the store's: backend.ErrNotFound, backend.ErrRange.
func (c *Cache) ReadRange(ctx context.Context, key string, off int64, p []byte) error {
	if !c.cacheable(key) {
		return backend.ReadRange(ctx, c.store, key, off, p)
	}
	if ok, err := c.readCopy(key, off, p); ok {
		return err
	}
	if fs := c.startFill(key); fs != nil {
		// The whole object is on its way: wait for it rather than add a
		// request of our own to the store's load, then read the copy.
		select {
		case <-fs.done:
		case <-ctx.Done():
			return ctx.Err()
		}
		if ok, err := c.readCopy(key, off, p); ok {
			return err
		}
	}
	c.misses.Add(1)
	return backend.ReadRange(ctx, c.store, key, off, p)
}

// GetRange is ReadRange into a new buffer of n bytes.
func (c *Cache) GetRange(ctx context.Context, key string, off, n int64) ([]byte, error) {
	if n < 0 {
		return nil, fmt.Errorf("%w: length %d", backend.ErrRange, n)
	}
	p := make([]byte, n)
	if err := c.ReadRange(ctx, key, off, p); err != nil {
		return nil, err
	}
	return p, nil
}

// readCopy reads from key's local copy and reports whether it answered:
// with the data, or with backend.ErrRange. A copy that fails to read (a
// disk error, a file shorter than recorded) is dropped, and the caller
// goes to the store.
func (c *Cache) readCopy(key string, off int64, p []byte) (bool, error) {
	e, f := c.acquire(key)
	if e == nil {
		return false, nil
	}
	err := readAt(f, e, off, p)
	c.release(e)
	switch {
	case err == nil:
		c.hits.Add(1)
		return true, nil
	case errors.Is(err, backend.ErrRange):
		return true, err
	}
	c.log.Debug("dropping an unreadable cached copy", "key", key, "err", err)
	c.drop(key)
	return false, nil
}

func readAt(f *os.File, e *entry, off int64, p []byte) error {
	if off < 0 || off+int64(len(p)) > e.size {
		return fmt.Errorf("%w: %s [%d, +%d) of %d bytes", backend.ErrRange, e.key, off, len(p), e.size)
	}
	_, err := f.ReadAt(p, off)
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF // the copy is shorter than recorded
	}
	return err
}

// acquire returns key's entry with an open file and a reference, or nil.
func (c *Cache) acquire(key string) (*entry, *os.File) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[key]
	if !ok {
		return nil, nil
	}
	if e.f == nil {
		f, err := os.Open(e.path)
		if err != nil {
			c.removeLocked(e)
			return nil, nil
		}
		e.f = f
		c.open++
		c.closeIdleLocked()
	}
	e.refs++
	c.lru.MoveToFront(e.elem)
	return e, e.f
}

func (c *Cache) release(e *entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e.refs--
	if e.gone && e.refs == 0 && e.f != nil {
		e.f.Close()
		e.f = nil
		c.open--
	}
}

// closeIdleLocked closes the files of the least recently used entries
// nobody reads while more than maxOpen are open.
func (c *Cache) closeIdleLocked() {
	for el := c.lru.Back(); el != nil && c.open > c.maxOpen; el = el.Prev() {
		e := el.Value.(*entry)
		if e.f != nil && e.refs == 0 {
			e.f.Close()
			e.f = nil
			c.open--
		}
	}
}

// removeLocked forgets e and deletes its file (readers holding it open
// finish their reads).
func (c *Cache) removeLocked(e *entry) {
	if e.gone {
		return
	}
	e.gone = true
	delete(c.entries, e.key)
	c.lru.Remove(e.elem)
	c.used -= e.size
	_ = os.Remove(e.path)
	if e.refs == 0 && e.f != nil {
		e.f.Close()
		e.f = nil
		c.open--
	}
}

func (c *Cache) drop(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.entries[key]; ok {
		c.removeLocked(e)
	}
}

// Forget drops key's copy, if any (the object was deleted).
func (c *Cache) Forget(key string) { c.drop(key) }

// startFill starts a background fetch of key, whole, when the admission
// policy lets it: the object missed often enough lately (Options.Misses)
// and a fill slot is free (fills never queue: a miss that finds every slot
// busy is served by the store alone, and a later miss tries again). It
// returns the fetch of key already under way, if any: its result is worth
// waiting for.
func (c *Cache) startFill(key string) *fillState {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	if fs, ok := c.filling[key]; ok {
		return fs
	}
	if _, ok := c.entries[key]; ok {
		return nil
	}
	if c.missesToFill > 1 {
		n := c.ghost[key] + 1
		if n < c.missesToFill {
			c.noteMissLocked(key, n)
			return nil
		}
	}
	select {
	case c.sem <- struct{}{}:
	default:
		c.noteMissLocked(key, c.missesToFill-1) // fill at the next miss
		return nil
	}
	delete(c.ghost, key)
	fs := &fillState{done: make(chan struct{})}
	c.filling[key] = fs
	c.fills.Add(1)
	go func() {
		defer c.fills.Done()
		err := c.fill(key)
		<-c.sem
		c.mu.Lock()
		delete(c.filling, key)
		c.mu.Unlock()
		close(fs.done)
		if err != nil && !errors.Is(err, context.Canceled) {
			c.fillErr.Add(1)
			c.log.Debug("could not cache an object", "key", key, "err", err)
		}
	}()
	return nil
}

// noteMissLocked records that key has missed n times lately. The record
// keeps the last ghostCap keys that missed without being cached.
func (c *Cache) noteMissLocked(key string, n int) {
	if _, ok := c.ghost[key]; !ok {
		if len(c.ghostQ) >= ghostCap {
			delete(c.ghost, c.ghostQ[0])
			c.ghostQ = c.ghostQ[1:]
		}
		c.ghostQ = append(c.ghostQ, key)
	}
	c.ghost[key] = n
}

// errDiskFull: a fill was skipped to leave the filesystem its headroom.
var errDiskFull = errors.New("diskcache: filesystem too full to cache")

// freeBytes is the space available to unprivileged writers on dir's
// filesystem.
func freeBytes(dir string) (int64, bool) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, false
	}
	return int64(st.Bavail) * int64(st.Bsize), true
}

// ghostCap is how many recently missed, uncached keys the admission policy
// remembers.
const ghostCap = 4096

func (c *Cache) fill(key string) error {
	data, _, err := c.store.Get(c.ctx, key)
	if err != nil {
		return err
	}
	size := int64(len(data))
	if size > c.max {
		return fmt.Errorf("object of %d bytes is larger than the cache", size)
	}
	if free, ok := freeBytes(c.dir); ok && free-size < c.minFree {
		// The disk is shared with the WAL, which must never run out of
		// room for a cache.
		return fmt.Errorf("%w: %d bytes free on the cache's filesystem, keeping %d", errDiskFull, free, c.minFree)
	}
	sum := sha256.Sum256([]byte(key))
	path := filepath.Join(c.dir, hex.EncodeToString(sum[:]))
	tmp := fmt.Sprintf("%s.%d.tmp", path, c.tmpSeq.Add(1))
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		_ = os.Remove(tmp)
		return context.Canceled
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	e := &entry{key: key, path: path, size: size}
	e.elem = c.lru.PushFront(e)
	c.entries[key] = e
	c.used += size
	c.nfill.Add(1)
	c.fillB.Add(uint64(size))
	for c.used > c.max {
		old := c.lru.Back().Value.(*entry)
		c.removeLocked(old)
		c.evicted.Add(1)
	}
	return nil
}

// Wait waits for the fills under way (tests and benchmarks).
func (c *Cache) Wait() { c.fills.Wait() }

// Close stops the fills, closes the cached files and removes the
// directory. The store is not closed.
func (c *Cache) Close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.cancel()
	c.fills.Wait()
	c.mu.Lock()
	for _, e := range c.entries {
		c.removeLocked(e)
	}
	c.mu.Unlock()
	return os.RemoveAll(c.dir)
}
