package backend

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/vfs"
)

// File is a store in a directory: each key is a file under the root, each
// '/'-separated segment a directory. Writes are atomic and durable (write a
// hidden temporary file, fsync, rename, fsync the directory); PutUnsynced
// skips both fsyncs and Sync does them later for a batch. PutIf holds an
// exclusive lock on <root>/.lock across compare and write, so it is safe
// between processes on one machine.
//
// Ranged reads keep the files they read open (see fdCache), so reading a
// block of a chunk costs one pread. The files of deleted chunk-sized
// objects are kept for reuse by later writes (see filepool.go).
type File struct {
	fs   vfs.FS
	root string
	fds  fdCache
	pool *filePool // nil: no recycling
}

// FileOptions tune a File store.
type FileOptions struct {
	// PoolFiles bounds the deleted objects' files kept for reuse: 0 means
	// DefaultPoolFiles, a negative value turns recycling off.
	PoolFiles int
}

func init() {
	Register("file", func(_ context.Context, u *url.URL) (Store, error) {
		if u.Host != "" && u.Host != "localhost" {
			return nil, fmt.Errorf("%w: file URL must be file:///absolute/path, got host %q", ErrInvalidURL, u.Host)
		}
		if !path.IsAbs(u.Path) {
			return nil, fmt.Errorf("%w: file URL needs an absolute path: %q", ErrInvalidURL, u.String())
		}
		return NewFile(vfs.Default, u.Path)
	})
}

// NewFile opens (creating if needed) a file store rooted at dir; a nil fsys
// means the operating system's filesystem.
func NewFile(fsys vfs.FS, dir string) (*File, error) {
	return NewFileOptions(fsys, dir, FileOptions{})
}

// NewFileOptions is NewFile with options. It removes the file pools of
// store instances that are gone (see filepool.go).
func NewFileOptions(fsys vfs.FS, dir string, o FileOptions) (*File, error) {
	if fsys == nil {
		fsys = vfs.Default
	}
	if err := vfs.MkdirAllDurable(fsys, dir); err != nil {
		return nil, fmt.Errorf("viperblock/backend: file store %s: %w", dir, err)
	}
	f := &File{fs: fsys, root: filepath.Clean(dir), fds: fdCache{limit: fdCacheSize, recheck: fdRecheck}}
	if o.PoolFiles == 0 {
		o.PoolFiles = DefaultPoolFiles
	}
	if o.PoolFiles > 0 {
		f.pool = newFilePool(fsys, f.root, o.PoolFiles)
	}
	// Abandoned pools are removed whether or not this store recycles.
	if err := newFilePool(fsys, f.root, 0).sweep(); err != nil {
		return nil, fmt.Errorf("viperblock/backend: file store %s: %w", dir, err)
	}
	return f, nil
}

// IsLocal implements Local: the kernel's page cache serves a file store's
// reads.
func (f *File) IsLocal() bool { return true }

func (f *File) path(key string) string { return filepath.Join(f.root, filepath.FromSlash(key)) }

func notFound(err error, key string) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: %s", ErrNotFound, key)
	}
	return err
}

// isObject reports whether key names a file (a directory is a key prefix,
// not an object).
func (f *File) isObject(key string) error {
	isDir, err := f.fs.Stat(f.path(key))
	if err != nil {
		return notFound(err, key)
	}
	if isDir {
		return fmt.Errorf("%w: %s", ErrNotFound, key)
	}
	return nil
}

func (f *File) Get(_ context.Context, key string) ([]byte, Version, error) {
	if err := ValidateKey(key); err != nil {
		return nil, "", err
	}
	if err := f.isObject(key); err != nil {
		return nil, "", err
	}
	d, err := f.readFile(f.path(key))
	if err != nil {
		return nil, "", notFound(err, key)
	}
	return d, version(d), nil
}

func (f *File) GetRange(ctx context.Context, key string, off, n int64) ([]byte, error) {
	if n < 0 {
		if err := ValidateKey(key); err != nil {
			return nil, err
		}
		o, err := f.openForRange(key)
		if err != nil {
			return nil, err
		}
		o.release(&f.fds)
		return nil, fmt.Errorf("%w: %s [%d,+%d)", ErrRange, key, off, n)
	}
	buf := make([]byte, n)
	if err := f.ReadRange(ctx, key, off, buf); err != nil {
		return nil, err
	}
	return buf, nil
}

// ReadRange implements RangeReader.
func (f *File) ReadRange(_ context.Context, key string, off int64, p []byte) error {
	if err := ValidateKey(key); err != nil {
		return err
	}
	o, err := f.openForRange(key)
	if err != nil {
		return err
	}
	defer o.release(&f.fds)
	n := int64(len(p))
	if off < 0 || off+n > o.size {
		return fmt.Errorf("%w: %s [%d,+%d) of %d bytes", ErrRange, key, off, n, o.size)
	}
	m, err := o.fh.ReadAt(p, off)
	if m < len(p) {
		if err == nil || err == io.EOF {
			return fmt.Errorf("%w: %s [%d,+%d)", ErrRange, key, off, n)
		}
		return err
	}
	return nil
}

func (f *File) Put(_ context.Context, key string, data []byte) error {
	if err := ValidateKey(key); err != nil {
		return err
	}
	return f.write(key, data)
}

// PutUnsynced implements BatchPutter: the object is written and renamed
// into place like Put, with its writeback started but not waited for.
func (f *File) PutUnsynced(_ context.Context, key string, data []byte) error {
	if err := ValidateKey(key); err != nil {
		return err
	}
	return f.writeFile(key, data, false)
}

// Sync implements BatchPutter: it fsyncs each object, then each of their
// directories once.
func (f *File) Sync(ctx context.Context, keys []string) error {
	dirs := map[string]bool{}
	for _, key := range keys {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := ValidateKey(key); err != nil {
			return err
		}
		p := f.path(key)
		fh, err := f.fs.OpenReadWrite(p)
		if err != nil {
			return fmt.Errorf("viperblock/backend: sync %s: %w", key, err)
		}
		err = fh.Sync()
		if cerr := fh.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("viperblock/backend: sync %s: %w", key, err)
		}
		dirs[filepath.Dir(p)] = true
	}
	for dir := range dirs {
		if err := vfs.SyncDir(f.fs, dir); err != nil {
			return fmt.Errorf("viperblock/backend: sync %s: %w", dir, err)
		}
	}
	return nil
}

func (f *File) write(key string, data []byte) error { return f.writeFile(key, data, true) }

// readFile reads a whole file under a shared lock (see openLocked).
func (f *File) readFile(p string) ([]byte, error) {
	fh, err := f.openLocked(p)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	return io.ReadAll(fh)
}

// writeFile writes the object to a hidden file (a new temporary file, or a
// pooled one, see filepool.go) and renames it into place, so readers never
// see a part of it. With durable it fsyncs the file before the rename and
// the directory after it.
func (f *File) writeFile(key string, data []byte, durable bool) error {
	p := f.path(key)
	defer f.fds.drop(key) // after the rename: no reader caches the old file
	dir := filepath.Dir(p)
	if err := vfs.MkdirAllDurable(f.fs, dir); err != nil {
		return err
	}
	fh, tmp, err := f.createForPut(dir, filepath.Base(p), len(data))
	if err != nil {
		return err
	}
	_, err = fh.Write(data)
	if err == nil {
		// A pooled file may be longer than data (a new one is empty).
		err = fh.Truncate(int64(len(data)))
	}
	if err == nil {
		if durable {
			err = fh.Sync()
		} else {
			vfs.StartWriteback(fh)
		}
	}
	if cerr := fh.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = f.fs.Rename(tmp, p)
	}
	if err != nil {
		_ = f.fs.Remove(tmp)
		return fmt.Errorf("viperblock/backend: put %s: %w", key, err)
	}
	if !durable {
		return nil
	}
	return vfs.SyncDir(f.fs, dir)
}

// PutIf implements Store. Its compare and write are atomic under the store
// lock, and a failure before the rename changes nothing; but a failure of
// the directory fsync after the rename leaves the new object in place, maybe
// not durable. Such an error is an unknown outcome, as a lost answer is on
// S3: a caller that reads the object back and finds its data should Sync the
// key before it trusts the write (the engine does).
func (f *File) PutIf(_ context.Context, key string, data []byte, ifMatch Version) (Version, error) {
	if err := ValidateKey(key); err != nil {
		return "", err
	}
	l, err := f.fs.Lock(filepath.Join(f.root, ".lock"))
	if err != nil {
		return "", fmt.Errorf("viperblock/backend: lock %s: %w", f.root, err)
	}
	defer l.Close()
	cur, err := f.readFile(f.path(key))
	exists := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	switch {
	case ifMatch == "" && exists:
		return "", fmt.Errorf("%w: %s exists", ErrPrecondition, key)
	case ifMatch != "" && (!exists || version(cur) != ifMatch):
		return "", fmt.Errorf("%w: %s", ErrPrecondition, key)
	}
	if err := f.write(key, data); err != nil {
		return "", err
	}
	return version(data), nil
}

func (f *File) Delete(_ context.Context, key string) error {
	if err := ValidateKey(key); err != nil {
		return err
	}
	p := f.path(key)
	// Forget our cached descriptor first: its shared lock would keep the
	// file out of the pool. And again after: a read may have cached it
	// meanwhile.
	f.fds.drop(key)
	defer f.fds.drop(key)
	if err := f.isObject(key); err != nil {
		return nil // missing, or a directory (a prefix, not an object)
	}
	if f.recycle(p) {
		return vfs.SyncDir(f.fs, filepath.Dir(p))
	}
	if err := f.fs.Remove(p); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	return vfs.SyncDir(f.fs, filepath.Dir(p))
}

func (f *File) List(_ context.Context, prefix string) ([]string, error) {
	if err := validPrefix(prefix); err != nil {
		return nil, err
	}
	// Walk from the deepest directory the prefix names in full.
	start := ""
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		start = prefix[:i]
	}
	var keys []string
	var walk func(rel string) error
	walk = func(rel string) error {
		names, err := f.fs.ReadDir(f.path(rel))
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		for _, n := range names {
			if strings.HasPrefix(n, ".") {
				continue
			}
			k := n
			if rel != "" {
				k = rel + "/" + n
			}
			if !strings.HasPrefix(k, prefix) && !strings.HasPrefix(prefix, k+"/") {
				continue
			}
			isDir, err := f.fs.Stat(f.path(k))
			if err != nil {
				continue
			}
			if isDir {
				if err := walk(k); err != nil {
					return err
				}
			} else if strings.HasPrefix(k, prefix) {
				keys = append(keys, k)
			}
		}
		return nil
	}
	err := walk(start)
	sort.Strings(keys)
	return keys, err
}

// Close drops the cached descriptors and removes the store's file pool.
func (f *File) Close() error {
	f.fds.closeAll()
	if f.pool != nil {
		return f.pool.close()
	}
	return nil
}
