package backend

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strings"
)

// DirLister is implemented by stores that can list one level of the key
// hierarchy without listing what lies below it: S3's ListObjectsV2 with the
// delimiter '/', a directory read on the file store. A bucket holding a
// thousand volumes of a hundred chunks each then lists its volumes in one
// request instead of a hundred.
type DirLister interface {
	// ListDirs returns, sorted and each once, the segments s such that some
	// key starts with prefix+s+"/". prefix is "" or ends with '/'. Objects
	// stored directly at prefix+s are not listed.
	ListDirs(ctx context.Context, prefix string) ([]string, error)
}

// ListDirs lists one level of a store's key hierarchy (see DirLister). A
// store that is not a DirLister is listed in full and the result derived
// from its keys: correct, but as costly as List.
func ListDirs(ctx context.Context, s Store, prefix string) ([]string, error) {
	if err := validDirPrefix(prefix); err != nil {
		return nil, err
	}
	if d, ok := s.(DirLister); ok {
		return d.ListDirs(ctx, prefix)
	}
	keys, err := s.List(ctx, prefix)
	if err != nil {
		return nil, err
	}
	return dirsOf(keys, prefix), nil
}

// validDirPrefix checks a ListDirs prefix: empty, or a key followed by '/'.
func validDirPrefix(p string) error {
	if p == "" {
		return nil
	}
	if !strings.HasSuffix(p, "/") {
		return fmt.Errorf("%w: ListDirs prefix %q must be empty or end with '/'", ErrInvalidKey, p)
	}
	return ValidateKey(strings.TrimSuffix(p, "/"))
}

// dirsOf derives ListDirs' answer from keys.
func dirsOf(keys []string, prefix string) []string {
	seen := map[string]bool{}
	var out []string
	for _, k := range keys {
		rest, ok := strings.CutPrefix(k, prefix)
		if !ok {
			continue
		}
		if seg, _, found := strings.Cut(rest, "/"); found && seg != "" && !seen[seg] {
			seen[seg] = true
			out = append(out, seg)
		}
	}
	sort.Strings(out)
	return out
}

// ListDirs implements DirLister.
func (m *Mem) ListDirs(_ context.Context, prefix string) ([]string, error) {
	if err := validDirPrefix(prefix); err != nil {
		return nil, err
	}
	keys, err := m.List(context.Background(), prefix)
	if err != nil {
		return nil, err
	}
	return dirsOf(keys, prefix), nil
}

// ListDirs implements DirLister: one directory read, and for each
// subdirectory a search for one object beneath it (a deleted object's
// directories may stay behind empty), which stops at the first file found.
func (f *File) ListDirs(_ context.Context, prefix string) ([]string, error) {
	if err := validDirPrefix(prefix); err != nil {
		return nil, err
	}
	rel := strings.TrimSuffix(prefix, "/")
	names, err := f.readDir(rel)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, n := range names {
		k := n
		if rel != "" {
			k = rel + "/" + n
		}
		isDir, err := f.fs.Stat(f.path(k))
		if err != nil || !isDir {
			continue
		}
		has, err := f.holdsObject(k)
		if err != nil {
			return nil, err
		}
		if has {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out, nil
}

// readDir lists the non-private names in the directory of key prefix rel;
// a missing directory is empty.
func (f *File) readDir(rel string) ([]string, error) {
	names, err := f.fs.ReadDir(f.path(rel))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	out := names[:0]
	for _, n := range names {
		if !strings.HasPrefix(n, ".") {
			out = append(out, n)
		}
	}
	return out, nil
}

// holdsObject reports whether some object lies beneath directory rel.
// Files at a level are looked for before subdirectories are entered.
func (f *File) holdsObject(rel string) (bool, error) {
	names, err := f.readDir(rel)
	if err != nil {
		return false, err
	}
	var dirs []string
	for _, n := range names {
		isDir, err := f.fs.Stat(f.path(rel + "/" + n))
		if err != nil {
			continue
		}
		if !isDir {
			return true, nil
		}
		dirs = append(dirs, rel+"/"+n)
	}
	for _, d := range dirs {
		if has, err := f.holdsObject(d); err != nil || has {
			return has, err
		}
	}
	return false, nil
}

// ListDirs implements DirLister.
func (s prefixed) ListDirs(ctx context.Context, prefix string) ([]string, error) {
	return ListDirs(ctx, s.Store, s.p+prefix)
}
