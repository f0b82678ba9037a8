package backend

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"sync"
)

// Mem is an in-memory store. Objects are copied in and out, so callers may
// reuse their buffers.
type Mem struct {
	mu   sync.RWMutex // guards objs
	objs map[string][]byte
}

// NewMem returns an empty memory store.
func NewMem() *Mem { return &Mem{objs: map[string][]byte{}} }

var (
	memNamedMu sync.Mutex // guards memNamed
	memNamed   = map[string]*Mem{}
)

func init() {
	Register("mem", func(_ context.Context, u *url.URL) (Store, error) {
		name := u.Host + u.Path
		memNamedMu.Lock()
		defer memNamedMu.Unlock()
		m, ok := memNamed[name]
		if !ok {
			m = NewMem()
			memNamed[name] = m
		}
		return nopClose{m}, nil
	})
}

// nopClose keeps a shared named memory store alive across Close.
type nopClose struct{ *Mem }

func (nopClose) Close() error { return nil }

func version(data []byte) Version {
	h := sha256.Sum256(data)
	return Version(hex.EncodeToString(h[:16]))
}

func (m *Mem) Get(_ context.Context, key string) ([]byte, Version, error) {
	if err := ValidateKey(key); err != nil {
		return nil, "", err
	}
	m.mu.RLock()
	d, ok := m.objs[key]
	m.mu.RUnlock()
	if !ok {
		return nil, "", fmt.Errorf("%w: %s", ErrNotFound, key)
	}
	return append([]byte(nil), d...), version(d), nil
}

// ReadRange implements RangeReader.
func (m *Mem) ReadRange(_ context.Context, key string, off int64, p []byte) error {
	if err := ValidateKey(key); err != nil {
		return err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	d, ok := m.objs[key]
	if !ok {
		return fmt.Errorf("%w: %s", ErrNotFound, key)
	}
	n := int64(len(p))
	if off < 0 || off+n > int64(len(d)) {
		return fmt.Errorf("%w: %s [%d,+%d) of %d bytes", ErrRange, key, off, n, len(d))
	}
	copy(p, d[off:off+n])
	return nil
}

func (m *Mem) GetRange(_ context.Context, key string, off, n int64) ([]byte, error) {
	if err := ValidateKey(key); err != nil {
		return nil, err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	d, ok := m.objs[key]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, key)
	}
	if off < 0 || n < 0 || off+n > int64(len(d)) {
		return nil, fmt.Errorf("%w: %s [%d,+%d) of %d bytes", ErrRange, key, off, n, len(d))
	}
	return append([]byte(nil), d[off:off+n]...), nil
}

func (m *Mem) Put(_ context.Context, key string, data []byte) error {
	if err := ValidateKey(key); err != nil {
		return err
	}
	c := append([]byte(nil), data...)
	m.mu.Lock()
	m.objs[key] = c
	m.mu.Unlock()
	return nil
}

func (m *Mem) PutIf(_ context.Context, key string, data []byte, ifMatch Version) (Version, error) {
	if err := ValidateKey(key); err != nil {
		return "", err
	}
	c := append([]byte(nil), data...)
	m.mu.Lock()
	defer m.mu.Unlock()
	cur, ok := m.objs[key]
	switch {
	case ifMatch == "" && ok:
		return "", fmt.Errorf("%w: %s exists", ErrPrecondition, key)
	case ifMatch != "" && (!ok || version(cur) != ifMatch):
		return "", fmt.Errorf("%w: %s", ErrPrecondition, key)
	}
	m.objs[key] = c
	return version(c), nil
}

func (m *Mem) Delete(_ context.Context, key string) error {
	if err := ValidateKey(key); err != nil {
		return err
	}
	m.mu.Lock()
	delete(m.objs, key)
	m.mu.Unlock()
	return nil
}

func (m *Mem) List(_ context.Context, prefix string) ([]string, error) {
	if err := validPrefix(prefix); err != nil {
		return nil, err
	}
	m.mu.RLock()
	var keys []string
	for k := range m.objs {
		if strings.HasPrefix(k, prefix) {
			keys = append(keys, k)
		}
	}
	m.mu.RUnlock()
	sort.Strings(keys)
	return keys, nil
}

// Bytes returns the total size of all objects (for space accounting tests).
func (m *Mem) Bytes() int64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	var n int64
	for _, d := range m.objs {
		n += int64(len(d))
	}
	return n
}

func (m *Mem) Close() error { return nil }

// Clone returns an independent copy of the store (for tests that branch a
// store's state).
func (m *Mem) Clone() *Mem {
	m.mu.RLock()
	defer m.mu.RUnlock()
	c := NewMem()
	for k, v := range m.objs {
		c.objs[k] = v // objects are never modified in place
	}
	return c
}
