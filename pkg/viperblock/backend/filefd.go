package backend

import (
	"errors"
	"io/fs"
	"os"
	"sync"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/vfs"
)

// fdCacheSize bounds the file descriptors a File store keeps open for
// ranged reads: one per chunk of 1 GiB of 4 MiB chunks, twice over.
const fdCacheSize = 512

// fdRecheck is how long a cached descriptor is used before the store checks
// again that its path still names the same file, so that an object deleted
// or replaced by another process is noticed within that time.
const fdRecheck = time.Second

// fdCache keeps files open between ranged reads, so a read of a chunk costs
// one pread instead of a stat, an open, an fstat, the read and a close.
// Objects are immutable in practice (chunk keys are never rewritten), but
// the store's contract does not depend on it: a Put, PutIf or Delete
// through the same store drops the key's descriptor first, and a change by
// another process is noticed within fdRecheck.
type fdCache struct {
	mu    sync.Mutex           // guards m, tick and gen
	m     map[string]*openFile // by key: a read that hits builds no path
	tick  uint64
	gen   uint64 // counts drops: a file opened before one is not cached
	limit int
	// recheck is fdRecheck (tests shorten it).
	recheck time.Duration
}

// openFile is a cached descriptor. refs counts the cache's own reference
// and each read in progress; the file is closed when it drops to zero.
type openFile struct {
	fh      vfs.File
	path    string // the file's path, for the recheck
	size    int64
	refs    int
	used    uint64
	checked time.Time
	id      os.FileInfo // the opened file's identity, when the FS gives one
}

func (o *openFile) release(c *fdCache) {
	c.mu.Lock()
	o.refs--
	last := o.refs == 0
	c.mu.Unlock()
	if last {
		_ = o.fh.Close()
	}
}

// get returns an open file for key with a reference the caller releases,
// or nil when none is cached (or the cached one is due for a check that
// failed; it is then dropped).
func (c *fdCache) get(fsys vfs.FS, key string) *openFile {
	c.mu.Lock()
	o, ok := c.m[key]
	if !ok {
		c.mu.Unlock()
		return nil
	}
	c.tick++
	o.used = c.tick
	o.refs++
	due := time.Since(o.checked) >= c.recheck
	c.mu.Unlock()
	if !due {
		return o
	}
	if sameFile(fsys, o.path, o) {
		c.mu.Lock()
		o.checked = time.Now()
		c.mu.Unlock()
		return o
	}
	o.release(c)
	c.drop(key)
	return nil
}

// sameFile reports whether path p still names the file o has open.
func sameFile(fsys vfs.FS, p string, o *openFile) bool {
	if o.id != nil {
		st, err := os.Stat(p)
		return err == nil && os.SameFile(st, o.id)
	}
	isDir, err := fsys.Stat(p)
	return err == nil && !isDir
}

// generation returns the drop count, read before opening a file to cache.
func (c *fdCache) generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

// put caches fh (of the given size, opened at path p) for key and returns
// it with a reference for the caller. If another reader cached key
// meanwhile, or a key was dropped since generation gen (fh may be a file a
// writer just replaced), fh is kept by the caller's reference alone and
// closed on release.
func (c *fdCache) put(key, p string, fh vfs.File, size int64, gen uint64) *openFile {
	o := &openFile{fh: fh, path: p, size: size, refs: 1, checked: time.Now()}
	if st, ok := fh.(interface{ Stat() (fs.FileInfo, error) }); ok {
		if fi, err := st.Stat(); err == nil {
			o.id = fi
		}
	}
	var evicted *openFile
	c.mu.Lock()
	if c.m == nil {
		c.m = map[string]*openFile{}
	}
	if _, dup := c.m[key]; !dup && gen == c.gen {
		if len(c.m) >= c.limit {
			var victim string
			for k, e := range c.m {
				if evicted == nil || e.used < evicted.used {
					victim, evicted = k, e
				}
			}
			delete(c.m, victim)
		}
		c.tick++
		o.used = c.tick
		o.refs++ // the cache's reference
		c.m[key] = o
	}
	c.mu.Unlock()
	if evicted != nil {
		evicted.release(c)
	}
	return o
}

// drop forgets key's descriptor (closing it once no read uses it).
func (c *fdCache) drop(key string) {
	c.mu.Lock()
	c.gen++
	o, ok := c.m[key]
	if ok {
		delete(c.m, key)
	}
	c.mu.Unlock()
	if ok {
		o.release(c)
	}
}

// closeAll drops every descriptor.
func (c *fdCache) closeAll() {
	c.mu.Lock()
	m := c.m
	c.m = nil
	c.mu.Unlock()
	for _, o := range m {
		o.release(c)
	}
}

// openForRange returns an open file for key's path, from the cache or
// newly opened and cached.
func (f *File) openForRange(key string) (*openFile, error) {
	if o := f.fds.get(f.fs, key); o != nil {
		return o, nil
	}
	p := f.path(key)
	gen := f.fds.generation()
	if err := f.isObject(key); err != nil {
		return nil, err
	}
	fh, err := f.openLocked(p)
	if err != nil {
		return nil, notFound(err, key)
	}
	size, err := fh.Size()
	if err != nil {
		_ = fh.Close()
		if errors.Is(err, fs.ErrNotExist) {
			return nil, notFound(err, key)
		}
		return nil, err
	}
	return f.fds.put(key, p, fh, size, gen), nil
}
