// Package vfs is the narrow filesystem interface through which the engine
// touches local disk (the write-ahead log and the file backend).
//
// Two implementations live here: Default, the operating system's filesystem,
// and MemFS, an in-memory filesystem that can simulate a machine crash by
// keeping only what was made durable (file data passed to Sync, directory
// entries whose directory was synced) plus a random share of what was not.
// Error injects failures by rule for error-path tests.
package vfs

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"syscall"
)

// File is an open file.
type File interface {
	io.Reader
	io.ReaderAt
	io.Writer
	io.Closer
	// Sync makes the file's data durable (fsync). On a directory it makes
	// the directory's entries durable.
	Sync() error
	// Truncate changes the file's size. It does not move the offset of
	// the next Write (Seek does).
	Truncate(size int64) error
	// Seek sets the offset of the next Read or Write.
	Seek(offset int64, whence int) (int64, error)
	// Size returns the file's current size.
	Size() (int64, error)
}

// FS is the filesystem interface used by the engine.
type FS interface {
	// Create creates or truncates name for reading and writing.
	Create(name string) (File, error)
	// Open opens an existing file read-only.
	Open(name string) (File, error)
	// OpenReadWrite opens an existing file for reading and writing.
	OpenReadWrite(name string) (File, error)
	// OpenDir opens a directory so that it can be synced.
	OpenDir(name string) (File, error)
	Remove(name string) error
	RemoveAll(name string) error
	Rename(oldname, newname string) error
	MkdirAll(dir string, perm os.FileMode) error
	// ReadDir lists the names in dir, sorted.
	ReadDir(dir string) ([]string, error)
	// Stat reports whether name exists and whether it is a directory.
	Stat(name string) (isDir bool, err error)
	// Lock takes an exclusive advisory lock on name (created if missing),
	// blocking until it is available. Close releases it.
	Lock(name string) (io.Closer, error)
	// TryLock is Lock that fails at once with ErrLocked when another holder
	// has the lock.
	TryLock(name string) (io.Closer, error)
}

// ErrLocked is returned by TryLock when the lock is held elsewhere.
var ErrLocked = errors.New("viperblock/vfs: locked by another user")

// Default is the operating system's filesystem.
var Default FS = osFS{}

type osFS struct{}

type osFile struct{ *os.File }

func (f osFile) Size() (int64, error) {
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

func (osFS) Create(name string) (File, error) {
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	return osFile{f}, nil
}

func (osFS) Open(name string) (File, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	return osFile{f}, nil
}

func (osFS) OpenReadWrite(name string) (File, error) {
	f, err := os.OpenFile(name, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	return osFile{f}, nil
}

func (osFS) OpenDir(name string) (File, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	return osFile{f}, nil
}

func (osFS) Remove(name string) error                    { return os.Remove(name) }
func (osFS) RemoveAll(name string) error                 { return os.RemoveAll(name) }
func (osFS) Rename(o, n string) error                    { return os.Rename(o, n) }
func (osFS) MkdirAll(dir string, perm os.FileMode) error { return os.MkdirAll(dir, perm) }

func (osFS) ReadDir(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	names := make([]string, len(ents))
	for i, e := range ents {
		names[i] = e.Name()
	}
	sort.Strings(names)
	return names, nil
}

func (osFS) Stat(name string) (bool, error) {
	st, err := os.Stat(name)
	if err != nil {
		return false, err
	}
	return st.IsDir(), nil
}

type osLock struct{ f *os.File }

func (l osLock) Close() error {
	_ = syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN)
	return l.f.Close()
}

func (osFS) Lock(name string) (io.Closer, error) { return osFlock(name, syscall.LOCK_EX) }

func (osFS) TryLock(name string) (io.Closer, error) {
	return osFlock(name, syscall.LOCK_EX|syscall.LOCK_NB)
}

func osFlock(name string, how int) (io.Closer, error) {
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	for {
		err = syscall.Flock(int(f.Fd()), how)
		if err != syscall.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		if err == syscall.EWOULDBLOCK {
			return nil, fmt.Errorf("%w: %s", ErrLocked, name)
		}
		return nil, err
	}
	return osLock{f}, nil
}

// WriteFileAtomic writes data to name so that after a crash name holds either
// its old content or data, never a mix: write a temporary file in the same
// directory, fsync it, rename it over name, fsync the directory. The file
// has mode 0600. Writers of one name must take turns: the temporary file's
// name is name+".tmp".
//
// Its crash points, in order: create the temporary file, write, fsync it,
// rename, open the directory, fsync the directory. A crash before the
// rename leaves the old file (and perhaps a stale temporary one, which the
// next write replaces); a crash after it leaves the new file, or, before
// the directory's fsync, possibly still the old one.
func WriteFileAtomic(fs FS, name string, data []byte) error {
	return WriteFileAtomicMode(fs, name, data, 0o600)
}

// WriteFileAtomicMode is WriteFileAtomic with the file's permission bits:
// 0600 (what Create makes) for anything private such as credentials, or
// wider, which needs an FS that implements Chmoder. The mode is set before
// the rename, so the file is never visible with another one.
func WriteFileAtomicMode(fs FS, name string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(name)
	tmp := name + ".tmp"
	f, err := fs.Create(tmp)
	if err != nil {
		return err
	}
	if perm != 0o600 {
		if c, ok := fs.(Chmoder); ok {
			err = c.Chmod(tmp, perm)
		} else {
			err = fmt.Errorf("viperblock/vfs: %s: this filesystem cannot set mode %v", name, perm)
		}
	}
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = fs.Remove(tmp)
		return err
	}
	if err := fs.Rename(tmp, name); err != nil {
		_ = fs.Remove(tmp)
		return err
	}
	return SyncDir(fs, dir)
}

// Chmoder is an FS that can change a file's permission bits.
type Chmoder interface {
	Chmod(name string, perm os.FileMode) error
}

func (osFS) Chmod(name string, perm os.FileMode) error { return os.Chmod(name, perm) }

// SyncDir fsyncs a directory so that entries created, renamed or removed in
// it are durable.
func SyncDir(fs FS, dir string) error {
	d, err := fs.OpenDir(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// DataSync makes f's data durable along with the metadata needed to read
// it back (its size), but not its timestamps: fdatasync where the file
// supports it, Sync otherwise.
func DataSync(f File) error {
	if d, ok := f.(interface{ dataSync() error }); ok {
		return d.dataSync()
	}
	return f.Sync()
}

// Preallocate makes f at least size bytes long, the space past its end
// zero filled and, where the filesystem supports it (fallocate), reserved
// on disk, so that writes below size neither grow the file nor allocate.
// It never shrinks f.
func Preallocate(f File, size int64) error {
	if a, ok := f.(interface{ allocate(int64) error }); ok {
		return a.allocate(size)
	}
	cur, err := f.Size()
	if err != nil || cur >= size {
		return err
	}
	return f.Truncate(size)
}

// StartWriteback asks the operating system to begin writing f's data to
// disk without waiting, so that a later Sync finds the work under way and
// writes of several files overlap. It is a hint: files that cannot take it
// ignore it, and it makes nothing durable.
func StartWriteback(f File) {
	if w, ok := f.(interface{ startWriteback() }); ok {
		w.startWriteback()
	}
}

// WillNeed asks the operating system to start reading f's data into its
// cache, without waiting, because it is about to be overwritten in pieces
// that do not cover whole pages: a write of part of a page that is not
// cached must first read the page from disk. It is a hint: files that
// cannot take it ignore it.
func WillNeed(f File) {
	if w, ok := f.(interface{ willNeed() }); ok {
		w.willNeed()
	}
}

// MkdirAllDurable creates dir and any missing parents and syncs each parent
// whose entries changed, so the new directories survive a crash.
func MkdirAllDurable(fs FS, dir string) error {
	if isDir, err := fs.Stat(dir); err == nil {
		if !isDir {
			return &os.PathError{Op: "mkdir", Path: dir, Err: syscall.ENOTDIR}
		}
		return nil
	}
	parent := filepath.Dir(dir)
	if parent != dir {
		if err := MkdirAllDurable(fs, parent); err != nil {
			return err
		}
	}
	if err := fs.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return SyncDir(fs, parent)
}

// ReadFile reads a whole file.
func ReadFile(fs FS, name string) ([]byte, error) {
	f, err := fs.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}
