// Package backend defines the object store under every volume and its two
// built-in implementations: an in-process memory store (tests, demos) and a
// file store (a directory on a local or shared filesystem). The S3 store
// lives in its own package and registers the "s3" URL scheme.
//
// A store holds immutable objects (chunks) and a few small mutable ones
// (manifests) that are replaced only by a compare-and-swap, PutIf.
//
// Keys are '/'-separated segments. Each segment is 1-128 bytes of
// [A-Za-z0-9._-] starting with a letter or digit (so never "." or "..");
// ValidateKey enforces this at the store boundary so no key can escape a
// store's root, and stores may keep private files whose names start with '.'.
//
// The file store keeps the files of deleted chunk-sized objects (1-16 MiB)
// in a per-instance pool, <root>/.pool/<id>/ (at most DefaultPoolFiles =
// 64 files, removed at Close, or by the next open once the owner is gone),
// and overwrites them for new objects: cheaper than new files. A deleted
// object's bytes stay in its pooled file until reused or Close, as the
// bytes of an unlinked file stay on disk; FileOptions.PoolFiles < 0 turns
// this off. Its readers hold shared flocks so that no file anyone reads
// is recycled (filepool.go has the protocol).
package backend

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"sync"
)

// Sentinel errors. Stores wrap them with detail; test with errors.Is.
var (
	// ErrNotFound: the object does not exist.
	ErrNotFound = errors.New("viperblock/backend: object not found")
	// ErrPrecondition: a PutIf lost its compare-and-swap.
	ErrPrecondition = errors.New("viperblock/backend: precondition failed (object changed)")
	// ErrInvalidKey: a key is not well formed.
	ErrInvalidKey = errors.New("viperblock/backend: invalid key")
	// ErrInvalidURL: a store URL could not be understood.
	ErrInvalidURL = errors.New("viperblock/backend: invalid store URL")
	// ErrRange: a ranged read reached past the end of the object.
	ErrRange = errors.New("viperblock/backend: range past end of object")
)

// Version identifies one stored content of an object (an ETag on S3, a
// content hash on the file store). The empty Version means "absent".
type Version string

// Store is the object store interface the engine uses.
type Store interface {
	// Get returns the whole object and its version.
	Get(ctx context.Context, key string) ([]byte, Version, error)
	// GetRange returns n bytes starting at off. Reading past the end is
	// ErrRange.
	GetRange(ctx context.Context, key string, off, n int64) ([]byte, error)
	// Put stores an object unconditionally and atomically: a reader sees the
	// old object or the new one, never a part.
	Put(ctx context.Context, key string, data []byte) error
	// PutIf stores an object only if its current version is ifMatch (the
	// empty Version: only if it does not exist), returning the new version.
	// Otherwise it fails with ErrPrecondition and changes nothing.
	PutIf(ctx context.Context, key string, data []byte, ifMatch Version) (Version, error)
	// Delete removes an object; deleting a missing object is not an error.
	Delete(ctx context.Context, key string) error
	// List returns the keys that start with prefix, sorted.
	List(ctx context.Context, prefix string) ([]string, error)
	// Close releases the store's resources.
	Close() error
}

// BatchPutter is implemented by stores for which making an object durable
// is the costly part of Put (the file store: an fsync per object). The
// engine puts a drain's chunks with PutUnsynced and makes them durable
// together with one Sync before it commits the manifest that references
// them, so the disk sees one batch of writes instead of a flush per chunk.
type BatchPutter interface {
	// PutUnsynced stores an object as Put does (a reader sees all of it
	// or none of it) except that a crash before Sync may lose it or leave
	// it torn. Only objects nothing references yet may be put this way.
	PutUnsynced(ctx context.Context, key string, data []byte) error
	// Sync makes the objects stored under keys by PutUnsynced durable.
	Sync(ctx context.Context, keys []string) error
}

// RangeReader is implemented by stores that can read a range of an object
// into the caller's buffer, saving the allocation and copy of GetRange.
type RangeReader interface {
	// ReadRange fills p with the len(p) bytes of key starting at off,
	// with GetRange's errors.
	ReadRange(ctx context.Context, key string, off int64, p []byte) error
}

// Local is implemented by stores whose objects are files of the node's own
// filesystem (the file store), so that the kernel's page cache already
// caches what they read.
type Local interface {
	// IsLocal reports whether the store's reads are served by the node's
	// filesystem.
	IsLocal() bool
}

// IsLocal reports whether s is a Local store whose reads the node's
// filesystem serves.
func IsLocal(s Store) bool {
	l, ok := s.(Local)
	return ok && l.IsLocal()
}

// ReadRange fills p from key at off: through s's RangeReader if it has one,
// else GetRange and a copy.
func ReadRange(ctx context.Context, s Store, key string, off int64, p []byte) error {
	if r, ok := s.(RangeReader); ok {
		return r.ReadRange(ctx, key, off, p)
	}
	b, err := s.GetRange(ctx, key, off, int64(len(p)))
	if err != nil {
		return err
	}
	if len(b) != len(p) {
		return fmt.Errorf("%w: %s [%d,+%d): the store returned %d bytes", ErrRange, key, off, len(p), len(b))
	}
	copy(p, b)
	return nil
}

// ValidateName checks one key segment (a volume or snapshot name).
func ValidateName(s string) error {
	if s == "" || len(s) > 128 || !isAlnum(s[0]) {
		return fmt.Errorf("%w: %q must be 1-128 characters starting with a letter or digit", ErrInvalidKey, s)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := isAlnum(c) || c == '.' || c == '_' || c == '-'
		if !ok {
			return fmt.Errorf("%w: %q has a character outside [A-Za-z0-9._-]", ErrInvalidKey, s)
		}
	}
	return nil
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// ValidateKey checks a whole key.
func ValidateKey(key string) error {
	if key == "" {
		return fmt.Errorf("%w: empty key", ErrInvalidKey)
	}
	for rest := key; ; {
		seg, more, found := strings.Cut(rest, "/")
		if err := ValidateName(seg); err != nil {
			return fmt.Errorf("%w (in key %q)", err, key)
		}
		if !found {
			return nil
		}
		rest = more
	}
}

// validPrefix checks a List prefix: a key, a key followed by '/', or empty.
func validPrefix(p string) error {
	if p == "" {
		return nil
	}
	return ValidateKey(strings.TrimSuffix(p, "/"))
}

// Opener opens a store from a parsed URL.
type Opener func(ctx context.Context, u *url.URL) (Store, error)

var (
	registryMu sync.Mutex // guards registry
	registry   = map[string]Opener{}
)

// Register makes a URL scheme available to Open. Store packages call it from
// init.
func Register(scheme string, open Opener) {
	registryMu.Lock()
	defer registryMu.Unlock()
	registry[scheme] = open
}

// Schemes lists the registered URL schemes.
func Schemes() []string {
	registryMu.Lock()
	defer registryMu.Unlock()
	var s []string
	for k := range registry {
		s = append(s, k)
	}
	sort.Strings(s)
	return s
}

// Open opens a store by URL: file:///abs/dir, mem://name, and any scheme a
// linked store package registered (s3://bucket/prefix?...).
func Open(ctx context.Context, rawURL string) (Store, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidURL, err)
	}
	registryMu.Lock()
	open, ok := registry[u.Scheme]
	registryMu.Unlock()
	if !ok {
		return nil, fmt.Errorf("%w: %q: unknown scheme %q (known: %s)", ErrInvalidURL, rawURL, u.Scheme, strings.Join(Schemes(), ", "))
	}
	return open(ctx, u)
}

// Prefixed returns a store whose keys are all placed under prefix.
func Prefixed(s Store, prefix string) (Store, error) {
	prefix = strings.Trim(prefix, "/")
	if prefix == "" {
		return s, nil
	}
	if err := ValidateKey(prefix); err != nil {
		return nil, err
	}
	return prefixed{s, prefix + "/"}, nil
}

type prefixed struct {
	Store
	p string
}

func (s prefixed) IsLocal() bool { return IsLocal(s.Store) }

func (s prefixed) Get(ctx context.Context, key string) ([]byte, Version, error) {
	return s.Store.Get(ctx, s.p+key)
}
func (s prefixed) GetRange(ctx context.Context, key string, off, n int64) ([]byte, error) {
	return s.Store.GetRange(ctx, s.p+key, off, n)
}
func (s prefixed) ReadRange(ctx context.Context, key string, off int64, p []byte) error {
	return ReadRange(ctx, s.Store, s.p+key, off, p)
}
func (s prefixed) Put(ctx context.Context, key string, data []byte) error {
	return s.Store.Put(ctx, s.p+key, data)
}
func (s prefixed) PutIf(ctx context.Context, key string, data []byte, v Version) (Version, error) {
	return s.Store.PutIf(ctx, s.p+key, data, v)
}
func (s prefixed) Delete(ctx context.Context, key string) error { return s.Store.Delete(ctx, s.p+key) }
func (s prefixed) List(ctx context.Context, prefix string) ([]string, error) {
	keys, err := s.Store.List(ctx, s.p+prefix)
	for i := range keys {
		keys[i] = strings.TrimPrefix(keys[i], s.p)
	}
	return keys, err
}
