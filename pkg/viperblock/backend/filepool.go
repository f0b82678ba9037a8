package backend

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/vfs"
)

// File recycling.
//
// Writing a new file costs the kernel fresh page-cache pages and fresh
// filesystem blocks; overwriting a file whose pages are cached costs a
// copy. Chunks come and go at the rate the volume writes, so the file
// store keeps the files of deleted chunk-sized objects and writes new
// objects into them, the way the WAL recycles its segments.
//
// Layout. Each File store keeps its own pool directory
// <root>/.pool/<16 hex digits>/, holding a lock file "lock" and the pooled
// files "<n>" (decimal). The store holds an exclusive flock on "lock" from
// the pool's creation until Close; a store that opens the same root later
// removes every pool whose lock it can take (the owner exited or crashed).
// A new pool takes its lock and then checks that its directory still
// exists, so a sweep that raced with its creation cannot leave it
// unlocked.
//
// Delete of an object of at least poolMinSize bytes (and at most
// poolMaxSize) moves its file into the pool with a rename, unless the pool
// holds DefaultPoolFiles files already. Put and PutUnsynced of data of at
// least poolMinSize bytes take a pooled file, overwrite it from offset 0
// (never truncating it to zero first, which would free its cached pages),
// truncate it to the data's length, and then proceed as for a new file:
// fsync for Put, writeback started for PutUnsynced, rename into place,
// directory fsync for Put. The pooled file is hidden until that rename, so
// a crash at any step leaves the key's old object or the new one, never a
// part, exactly as with a fresh temporary file; a crash leaves the pool to
// the next open's sweep.
//
// Readers. Another open descriptor on a file that is recycled would read
// the new object's bytes under the old key. So every read of the file
// store holds a shared flock on the file it reads (the descriptor cache
// holds it as long as it keeps the file open) and checks, after taking
// it, that the key still names that file; Delete moves a file into the
// pool only if it gets an exclusive flock (no reader in any process has
// it open), and Put reuses a pooled file only under an exclusive flock
// too. A file that someone reads is unlinked as before. Processes sharing
// a file-store directory must all take these read locks, i.e. run a
// version of this package that recycles.
//
// Deleted data. Until a pooled file is reused or the store is closed, the
// bytes of a deleted object stay in it, readable by whoever can read the
// store's directory (as they were before the delete), and on the
// filesystem's blocks as after any unlink. A crash between a PutUnsynced
// and the Sync that follows it can leave such old bytes in the new
// object's file past what was written; the engine never commits an object
// before its Sync. The store's directory is the volume's trust boundary,
// so this is accepted; a caller that must not keep deleted bytes around
// sets Pool to 0.

// DefaultPoolFiles bounds the files a File store keeps for reuse (64 chunk
// files of 4 MiB: 256 MiB of disk and, while cached, page cache).
const DefaultPoolFiles = 64

// Objects between poolMinSize and poolMaxSize bytes are recycled.
const (
	poolMinSize = 1 << 20
	poolMaxSize = 16 << 20
)

// poolDirName is the directory under the store root that holds the pools.
const poolDirName = ".pool"

// filePool is a File store's pool of files for reuse.
type filePool struct {
	fs    vfs.FS
	base  string // <root>/.pool
	limit int

	mu      sync.Mutex // guards the fields below
	dir     string     // this store's pool, "" until first used
	lock    io.Closer
	free    []string // pooled file names in dir
	pending int      // files being moved in
	seq     uint64
	closed  bool
}

func newFilePool(fsys vfs.FS, root string, limit int) *filePool {
	return &filePool{fs: fsys, base: filepath.Join(root, poolDirName), limit: limit}
}

// sweep removes the pools whose owner is gone (their lock is free).
func (p *filePool) sweep() error {
	names, err := p.fs.ReadDir(p.base)
	if err != nil {
		if isNotExist(err) {
			return nil
		}
		return err
	}
	for _, n := range names {
		dir := filepath.Join(p.base, n)
		if dir == p.dir {
			continue
		}
		l, err := p.fs.TryLock(filepath.Join(dir, "lock"))
		if err != nil {
			continue // held (a live pool), or no longer there
		}
		err = p.fs.RemoveAll(dir)
		_ = l.Close()
		if err != nil && !isNotExist(err) {
			return fmt.Errorf("viperblock/backend: remove abandoned pool %s: %w", dir, err)
		}
	}
	return nil
}

// ensure creates this store's pool directory; p.mu must be held.
func (p *filePool) ensure() error {
	if p.dir != "" {
		return nil
	}
	for range 10 {
		var rnd [8]byte
		_, _ = rand.Read(rnd[:])
		dir := filepath.Join(p.base, hex.EncodeToString(rnd[:]))
		if err := p.fs.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		l, err := p.fs.TryLock(filepath.Join(dir, "lock"))
		if err != nil {
			if errors.Is(err, vfs.ErrLocked) || isNotExist(err) {
				continue // a sweep is removing it
			}
			return err
		}
		// A sweep that took the lock before us has removed the directory.
		if isDir, err := p.fs.Stat(dir); err != nil || !isDir {
			_ = l.Close()
			continue
		}
		p.dir, p.lock = dir, l
		return nil
	}
	return errors.New("viperblock/backend: could not create a file pool")
}

// reserve claims room for one more file; the caller adds it or calls
// unreserve. It returns the path to move the file to.
func (p *filePool) reserve() (string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || len(p.free)+p.pending >= p.limit {
		return "", false
	}
	if err := p.ensure(); err != nil {
		return "", false
	}
	p.pending++
	p.seq++
	return filepath.Join(p.dir, strconv.FormatUint(p.seq, 10)), true
}

// settle ends a reservation; with ok the file at path is now pooled.
func (p *filePool) settle(path string, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pending--
	if ok && !p.closed && filepath.Dir(path) == p.dir {
		p.free = append(p.free, filepath.Base(path))
		return
	}
	if ok {
		_ = p.fs.Remove(path)
	}
}

// take removes a pooled file from the pool and returns its path.
func (p *filePool) take() (string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || len(p.free) == 0 {
		return "", false
	}
	n := p.free[len(p.free)-1]
	p.free = p.free[:len(p.free)-1]
	return filepath.Join(p.dir, n), true
}

// size reports the files pooled now.
func (p *filePool) size() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.free)
}

// close removes the pool and its files.
func (p *filePool) close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	p.free = nil
	if p.dir == "" {
		return nil
	}
	err := p.fs.RemoveAll(p.dir)
	if cerr := p.lock.Close(); err == nil {
		err = cerr
	}
	return err
}

func isNotExist(err error) bool { return errors.Is(err, fs.ErrNotExist) }

// errChanged: a path named another file once its open file was locked.
var errChanged = errors.New("file replaced while being opened")

// recycle tries to move the object file at path into the pool; it reports
// whether it did (the object is then gone from its key). It fails, and the
// caller unlinks the file, when the file's size is out of range, when the
// pool is full, or when a reader has the file open.
func (f *File) recycle(path string) bool {
	if f.pool == nil {
		return false
	}
	fh, err := f.fs.OpenReadWrite(path)
	if err != nil {
		return false
	}
	defer fh.Close()
	if n, err := fh.Size(); err != nil || n < poolMinSize || n > poolMaxSize {
		return false
	}
	if vfs.TryLockFile(fh, vfs.LockExclusive) != nil {
		return false // a reader has it open, or locks are not supported
	}
	dst, ok := f.pool.reserve()
	if !ok {
		return false
	}
	if err := f.fs.Rename(path, dst); err != nil {
		f.pool.settle(dst, false)
		return false
	}
	// If path was replaced between our open and the rename, what we moved
	// is not the file we locked: a reader may have it open. Drop it.
	same, err := vfs.IsFile(fh, dst)
	f.pool.settle(dst, err == nil && same)
	if err != nil || !same {
		_ = f.fs.Remove(dst)
	}
	return true
}

// createForPut returns a file to write an object of n bytes into and the
// path it lies at (hidden from List): a pooled file under an exclusive
// lock, positioned at 0, or else a new temporary file in dir.
func (f *File) createForPut(dir, base string, n int) (vfs.File, string, error) {
	if f.pool != nil && n >= poolMinSize {
		for {
			pth, ok := f.pool.take()
			if !ok {
				break
			}
			fh, err := f.fs.OpenReadWrite(pth)
			if err == nil {
				if err = vfs.TryLockFile(fh, vfs.LockExclusive); err == nil {
					return fh, pth, nil
				}
				_ = fh.Close()
			}
			_ = f.fs.Remove(pth) // a stale reader still has it: drop it
		}
	}
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	tmp := filepath.Join(dir, "."+base+".tmp-"+hex.EncodeToString(rnd[:]))
	fh, err := f.fs.Create(tmp)
	return fh, tmp, err
}

// openLocked opens path for reading under a shared lock, after checking
// that path still names the opened file (a file moved into the pool
// between the open and the lock is not the object any more). A file
// locked exclusively is being moved into the pool: the open is retried, to
// find the key gone or replaced.
func (f *File) openLocked(path string) (vfs.File, error) {
	var lastErr error
	for range 200 {
		fh, err := f.fs.Open(path)
		if err != nil {
			return nil, err
		}
		err = vfs.TryLockFile(fh, vfs.LockShared)
		if errors.Is(err, errors.ErrUnsupported) {
			return fh, nil
		}
		if err == nil {
			same, serr := vfs.IsFile(fh, path)
			if serr == nil && same {
				return fh, nil
			}
			err = serr
			if err == nil {
				err = errChanged
			}
		}
		_ = fh.Close()
		if !errors.Is(err, vfs.ErrLocked) && !errors.Is(err, errChanged) {
			return nil, err
		}
		lastErr = err
		time.Sleep(100 * time.Microsecond)
	}
	return nil, fmt.Errorf("viperblock/backend: open %s: %w", path, lastErr)
}
