package backend

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/metric"
)

// Store operations as RequestStats names them.
const (
	OpGet            = "get"               // Get and GetRange
	OpPut            = "put"               // Put and BatchPutter.PutUnsynced
	OpPutIfMatch     = "put_if_match"      // PutIf with a version
	OpPutIfNoneMatch = "put_if_none_match" // PutIf with the empty version (create)
	OpList           = "list"
	OpDelete         = "delete"
	OpSync           = "sync" // BatchPutter.Sync
)

// Ops lists the operations RequestStats counts, in a fixed order.
var Ops = []string{OpGet, OpPut, OpPutIfMatch, OpPutIfNoneMatch, OpList, OpDelete, OpSync}

const (
	opGet = iota
	opPut
	opPutIfMatch
	opPutIfNoneMatch
	opList
	opDelete
	opSync
	numOps
)

// RequestStats counts a store's requests by operation: those that got an
// answer (OK: success, and the answers ErrNotFound and ErrPrecondition,
// which are the store working as it should) and those that failed
// (Errors: everything else, cancellations included), their latency, and
// the attempts the store repeated inside one request (Retries, reported by
// stores that retry through NoteRetry). Safe for concurrent use.
type RequestStats struct {
	ops [numOps]opCounters
}

type opCounters struct {
	ok, errors, retries atomic.Uint64
	seconds             metric.Histogram
}

// OpStats are one operation's counts since the store was wrapped.
type OpStats struct {
	OK, Errors, Retries uint64
	Seconds             metric.Snapshot
}

// Snapshot returns the counts by operation (every name in Ops).
func (r *RequestStats) Snapshot() map[string]OpStats {
	out := make(map[string]OpStats, numOps)
	for i, name := range Ops {
		c := &r.ops[i]
		out[name] = OpStats{OK: c.ok.Load(), Errors: c.errors.Load(), Retries: c.retries.Load(), Seconds: c.seconds.Snapshot()}
	}
	return out
}

type retryKey struct{}

// NoteRetry is called by a store each time it repeats a failed attempt of
// the request ctx belongs to; it counts the retry if the request came
// through a store wrapped by Count.
func NoteRetry(ctx context.Context) {
	if c, ok := ctx.Value(retryKey{}).(*atomic.Uint64); ok {
		c.Add(1)
	}
}

// Count wraps s so that its requests are counted in the returned
// RequestStats. The wrapper is a BatchPutter when s is one.
func Count(s Store) (Store, *RequestStats) {
	st := &RequestStats{}
	c := countingStore{s, st}
	if b, ok := s.(BatchPutter); ok {
		return countingBatchStore{c, b}, st
	}
	return c, st
}

type countingStore struct {
	Store
	st *RequestStats
}

func (s countingStore) IsLocal() bool { return IsLocal(s.Store) }

// begin starts counting a request of operation op.
func (s countingStore) begin(ctx context.Context, op int) (context.Context, func(error)) {
	c := &s.st.ops[op]
	start := time.Now()
	return context.WithValue(ctx, retryKey{}, &c.retries), func(err error) {
		c.seconds.Since(start)
		if err == nil || errors.Is(err, ErrNotFound) || errors.Is(err, ErrPrecondition) {
			c.ok.Add(1)
		} else {
			c.errors.Add(1)
		}
	}
}

func (s countingStore) Get(ctx context.Context, key string) ([]byte, Version, error) {
	ctx, done := s.begin(ctx, opGet)
	b, v, err := s.Store.Get(ctx, key)
	done(err)
	return b, v, err
}

func (s countingStore) GetRange(ctx context.Context, key string, off, n int64) ([]byte, error) {
	ctx, done := s.begin(ctx, opGet)
	b, err := s.Store.GetRange(ctx, key, off, n)
	done(err)
	return b, err
}

func (s countingStore) ReadRange(ctx context.Context, key string, off int64, p []byte) error {
	ctx, done := s.begin(ctx, opGet)
	err := ReadRange(ctx, s.Store, key, off, p)
	done(err)
	return err
}

func (s countingStore) Put(ctx context.Context, key string, data []byte) error {
	ctx, done := s.begin(ctx, opPut)
	err := s.Store.Put(ctx, key, data)
	done(err)
	return err
}

func (s countingStore) PutIf(ctx context.Context, key string, data []byte, ifMatch Version) (Version, error) {
	op := opPutIfMatch
	if ifMatch == "" {
		op = opPutIfNoneMatch
	}
	ctx, done := s.begin(ctx, op)
	v, err := s.Store.PutIf(ctx, key, data, ifMatch)
	done(err)
	return v, err
}

func (s countingStore) Delete(ctx context.Context, key string) error {
	ctx, done := s.begin(ctx, opDelete)
	err := s.Store.Delete(ctx, key)
	done(err)
	return err
}

func (s countingStore) List(ctx context.Context, prefix string) ([]string, error) {
	ctx, done := s.begin(ctx, opList)
	keys, err := s.Store.List(ctx, prefix)
	done(err)
	return keys, err
}

type countingBatchStore struct {
	countingStore
	b BatchPutter
}

func (s countingBatchStore) PutUnsynced(ctx context.Context, key string, data []byte) error {
	ctx, done := s.begin(ctx, opPut)
	err := s.b.PutUnsynced(ctx, key, data)
	done(err)
	return err
}

func (s countingBatchStore) Sync(ctx context.Context, keys []string) error {
	ctx, done := s.begin(ctx, opSync)
	err := s.b.Sync(ctx, keys)
	done(err)
	return err
}
