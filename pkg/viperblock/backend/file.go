package backend

import (
	"context"
	"crypto/rand"
	"encoding/hex"
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
// block of a chunk costs one pread.
type File struct {
	fs   vfs.FS
	root string
	fds  fdCache
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
	if fsys == nil {
		fsys = vfs.Default
	}
	if err := vfs.MkdirAllDurable(fsys, dir); err != nil {
		return nil, fmt.Errorf("viperblock/backend: file store %s: %w", dir, err)
	}
	return &File{fs: fsys, root: filepath.Clean(dir), fds: fdCache{limit: fdCacheSize, recheck: fdRecheck}}, nil
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
	d, err := vfs.ReadFile(f.fs, f.path(key))
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

// writeFile writes the object to a temporary file and renames it into
// place, so readers never see a part of it. With durable it fsyncs the file
// before the rename and the directory after it.
func (f *File) writeFile(key string, data []byte, durable bool) error {
	p := f.path(key)
	defer f.fds.drop(p) // after the rename: no reader caches the old file
	dir := filepath.Dir(p)
	if err := vfs.MkdirAllDurable(f.fs, dir); err != nil {
		return err
	}
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	tmp := filepath.Join(dir, "."+filepath.Base(p)+".tmp-"+hex.EncodeToString(rnd[:]))
	fh, err := f.fs.Create(tmp)
	if err != nil {
		return err
	}
	if _, err = fh.Write(data); err == nil {
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
	cur, err := vfs.ReadFile(f.fs, f.path(key))
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
	defer f.fds.drop(p)
	if err := f.isObject(key); err != nil {
		return nil // missing, or a directory (a prefix, not an object)
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

func (f *File) Close() error {
	f.fds.closeAll()
	return nil
}
