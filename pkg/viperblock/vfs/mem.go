package vfs

import (
	"fmt"
	"io"
	"math/rand"
	"os"
	"path"
	"sort"
	"strings"
	"sync"
	"syscall"
)

// MemFS is an in-memory filesystem that tracks durability the way a real
// disk does: a file's data is durable up to its last Sync, and a directory
// entry (create, rename, remove) is durable once its directory is synced.
// CrashClone returns the filesystem a machine would find after a power loss.
//
// Paths are cleaned and treated as absolute; "." and "" name the root.
type MemFS struct {
	mu   sync.Mutex // guards the whole tree
	root *memNode
	// locks maps lock-file paths to their lock; each holds a 1-slot channel.
	locks map[string]chan struct{}
}

type memNode struct {
	isDir bool
	// file state
	data   []byte // current content
	synced []byte // content as of the last Sync
	// directory state
	entries map[string]*memNode // current entries
	durable map[string]*memNode // entries as of the last directory Sync
	// advisory locks of open files (TryLockFile)
	lockShared int
	lockExcl   bool
}

func newDir() *memNode {
	return &memNode{isDir: true, entries: map[string]*memNode{}, durable: map[string]*memNode{}}
}

// NewMem returns an empty MemFS.
func NewMem() *MemFS {
	return &MemFS{root: newDir(), locks: map[string]chan struct{}{}}
}

func splitPath(name string) []string {
	name = path.Clean("/" + name)
	if name == "/" {
		return nil
	}
	return strings.Split(name[1:], "/")
}

func pathErr(op, name string, err error) error { return &os.PathError{Op: op, Path: name, Err: err} }

// lookup returns the node for name; fs.mu must be held.
func (fs *MemFS) lookup(name string) (*memNode, error) {
	n := fs.root
	for _, p := range splitPath(name) {
		if !n.isDir {
			return nil, syscall.ENOTDIR
		}
		c, ok := n.entries[p]
		if !ok {
			return nil, os.ErrNotExist
		}
		n = c
	}
	return n, nil
}

// parent returns the parent directory node and base name; fs.mu must be held.
func (fs *MemFS) parent(name string) (*memNode, string, error) {
	parts := splitPath(name)
	if len(parts) == 0 {
		return nil, "", syscall.EINVAL
	}
	dir, err := fs.lookup("/" + strings.Join(parts[:len(parts)-1], "/"))
	if err != nil {
		return nil, "", err
	}
	if !dir.isDir {
		return nil, "", syscall.ENOTDIR
	}
	return dir, parts[len(parts)-1], nil
}

func (fs *MemFS) Create(name string) (File, error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	dir, base, err := fs.parent(name)
	if err != nil {
		return nil, pathErr("create", name, err)
	}
	n, ok := dir.entries[base]
	if ok {
		if n.isDir {
			return nil, pathErr("create", name, syscall.EISDIR)
		}
		n.data = n.data[:0:0]
	} else {
		n = &memNode{}
		dir.entries[base] = n
	}
	return &memFile{fs: fs, n: n, write: true}, nil
}

func (fs *MemFS) open(name string, write bool) (File, error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	n, err := fs.lookup(name)
	if err != nil {
		return nil, pathErr("open", name, err)
	}
	if n.isDir && write {
		return nil, pathErr("open", name, syscall.EISDIR)
	}
	return &memFile{fs: fs, n: n, write: write}, nil
}

func (fs *MemFS) Open(name string) (File, error)          { return fs.open(name, false) }
func (fs *MemFS) OpenReadWrite(name string) (File, error) { return fs.open(name, true) }
func (fs *MemFS) OpenDir(name string) (File, error)       { return fs.open(name, false) }

func (fs *MemFS) Remove(name string) error {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	dir, base, err := fs.parent(name)
	if err != nil {
		return pathErr("remove", name, err)
	}
	n, ok := dir.entries[base]
	if !ok {
		return pathErr("remove", name, os.ErrNotExist)
	}
	if n.isDir && len(n.entries) > 0 {
		return pathErr("remove", name, syscall.ENOTEMPTY)
	}
	delete(dir.entries, base)
	return nil
}

func (fs *MemFS) RemoveAll(name string) error {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	dir, base, err := fs.parent(name)
	if err != nil {
		if err == os.ErrNotExist {
			return nil
		}
		return pathErr("removeall", name, err)
	}
	delete(dir.entries, base)
	return nil
}

func (fs *MemFS) Rename(oldname, newname string) error {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	od, ob, err := fs.parent(oldname)
	if err != nil {
		return pathErr("rename", oldname, err)
	}
	nd, nb, err := fs.parent(newname)
	if err != nil {
		return pathErr("rename", newname, err)
	}
	n, ok := od.entries[ob]
	if !ok {
		return pathErr("rename", oldname, os.ErrNotExist)
	}
	delete(od.entries, ob)
	nd.entries[nb] = n
	return nil
}

func (fs *MemFS) MkdirAll(dir string, perm os.FileMode) error {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	n := fs.root
	for _, p := range splitPath(dir) {
		c, ok := n.entries[p]
		if !ok {
			c = newDir()
			n.entries[p] = c
		} else if !c.isDir {
			return pathErr("mkdir", dir, syscall.ENOTDIR)
		}
		n = c
	}
	return nil
}

func (fs *MemFS) ReadDir(dir string) ([]string, error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	n, err := fs.lookup(dir)
	if err != nil {
		return nil, pathErr("readdir", dir, err)
	}
	if !n.isDir {
		return nil, pathErr("readdir", dir, syscall.ENOTDIR)
	}
	names := make([]string, 0, len(n.entries))
	for k := range n.entries {
		names = append(names, k)
	}
	sort.Strings(names)
	return names, nil
}

func (fs *MemFS) Stat(name string) (bool, error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	n, err := fs.lookup(name)
	if err != nil {
		return false, pathErr("stat", name, err)
	}
	return n.isDir, nil
}

// Chmod checks that name exists; MemFS keeps no permission bits.
func (fs *MemFS) Chmod(name string, _ os.FileMode) error {
	_, err := fs.Stat(name)
	return err
}

type memLock struct{ ch chan struct{} }

func (l memLock) Close() error { <-l.ch; return nil }

func (fs *MemFS) lockChan(name string) chan struct{} {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	ch, ok := fs.locks[path.Clean("/"+name)]
	if !ok {
		ch = make(chan struct{}, 1)
		fs.locks[path.Clean("/"+name)] = ch
	}
	return ch
}

// Lock takes an in-process exclusive lock named by a path. Locks do not
// survive CrashClone, as a process's locks do not survive a crash.
func (fs *MemFS) Lock(name string) (io.Closer, error) {
	ch := fs.lockChan(name)
	ch <- struct{}{}
	return memLock{ch}, nil
}

// TryLock is Lock that fails with ErrLocked instead of waiting.
func (fs *MemFS) TryLock(name string) (io.Closer, error) {
	ch := fs.lockChan(name)
	select {
	case ch <- struct{}{}:
		return memLock{ch}, nil
	default:
		return nil, fmt.Errorf("%w: %s", ErrLocked, name)
	}
}

// CrashClone returns a new MemFS holding what a crash at this instant would
// leave: directory entries as of their directory's last sync, file data as of
// its last sync plus a random prefix of the unsynced changes counted from the
// first changed byte (a torn append, or a torn overwrite in place), unless
// the file shrank since. rng chooses the share; nil keeps none.
func (fs *MemFS) CrashClone(rng *rand.Rand) *MemFS {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	out := NewMem()
	seen := map[*memNode]*memNode{}
	var clone func(n *memNode) *memNode
	clone = func(n *memNode) *memNode {
		if c, ok := seen[n]; ok {
			return c
		}
		if n.isDir {
			c := newDir()
			seen[n] = c
			names := make([]string, 0, len(n.durable))
			for k := range n.durable {
				names = append(names, k)
			}
			sort.Strings(names) // deterministic use of rng
			for _, k := range names {
				c.entries[k] = clone(n.durable[k])
				c.durable[k] = c.entries[k]
			}
			return c
		}
		keep := append([]byte(nil), n.synced...)
		if rng != nil && len(n.data) >= len(n.synced) {
			// The unsynced changes from the first changed byte on
			// reached the disk in order, up to a random point: a torn
			// append, or a torn overwrite of a reused file.
			d := 0
			for d < len(n.synced) && n.synced[d] == n.data[d] {
				d++
			}
			if extra := n.data[d:]; len(extra) > 0 && (d < len(n.synced) || len(n.data) > len(n.synced)) {
				k := rng.Intn(len(extra) + 1)
				if d+k > len(keep) {
					keep = append(keep, make([]byte, d+k-len(keep))...)
				}
				copy(keep[d:], extra[:k])
			}
		}
		c := &memNode{data: keep, synced: append([]byte(nil), keep...)}
		seen[n] = c
		return c
	}
	out.root = clone(fs.root)
	// The root itself always exists.
	return out
}

type memFile struct {
	fs    *MemFS
	n     *memNode
	off   int64
	write bool
	held  LockMode // the advisory lock held, plus one (0: none)
}

func (f *memFile) Read(p []byte) (int, error) {
	n, err := f.ReadAt(p, f.off)
	f.off += int64(n)
	return n, err
}

func (f *memFile) ReadAt(p []byte, off int64) (int, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if f.n.isDir {
		return 0, syscall.EISDIR
	}
	if off >= int64(len(f.n.data)) {
		return 0, io.EOF
	}
	n := copy(p, f.n.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (f *memFile) Write(p []byte) (int, error) {
	if !f.write {
		return 0, syscall.EBADF
	}
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	end := f.off + int64(len(p))
	if end > int64(len(f.n.data)) {
		if end <= int64(cap(f.n.data)) {
			f.n.data = f.n.data[:end]
		} else {
			nd := make([]byte, end, 2*end)
			copy(nd, f.n.data)
			f.n.data = nd
		}
	}
	copy(f.n.data[f.off:], p)
	f.off = end
	return len(p), nil
}

func (f *memFile) Sync() error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if f.n.isDir {
		f.n.durable = make(map[string]*memNode, len(f.n.entries))
		for k, v := range f.n.entries {
			f.n.durable[k] = v
		}
		return nil
	}
	f.n.synced = append(f.n.synced[:0:0], f.n.data...)
	return nil
}

func (f *memFile) Truncate(size int64) error {
	if !f.write {
		return syscall.EBADF
	}
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if size <= int64(len(f.n.data)) {
		f.n.data = f.n.data[:size:size]
	} else {
		f.n.data = append(f.n.data, make([]byte, size-int64(len(f.n.data)))...)
	}
	return nil
}

func (f *memFile) Seek(offset int64, whence int) (int64, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += f.off
	case io.SeekEnd:
		offset += int64(len(f.n.data))
	default:
		return 0, syscall.EINVAL
	}
	if offset < 0 {
		return 0, syscall.EINVAL
	}
	f.off = offset
	return offset, nil
}

func (f *memFile) Size() (int64, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	return int64(len(f.n.data)), nil
}

func (f *memFile) Close() error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	f.unlockLocked()
	return nil
}
