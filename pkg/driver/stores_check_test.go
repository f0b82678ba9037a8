package driver

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

// ignoresIfMatch is a store that applies a PutIf with If-Match
// unconditionally.
type ignoresIfMatch struct{ *backend.Mem }

func (s ignoresIfMatch) PutIf(ctx context.Context, key string, data []byte, v backend.Version) (backend.Version, error) {
	if v == "" {
		return s.Mem.PutIf(ctx, key, data, v)
	}
	if err := s.Mem.Put(ctx, key, data); err != nil {
		return "", err
	}
	_, v, err := s.Mem.Get(ctx, key)
	return v, err
}

// countingStore counts the self-test's writes.
type countingStore struct {
	*backend.Mem
	puts *int
	mu   *sync.Mutex
}

func (s countingStore) PutIf(ctx context.Context, key string, data []byte, v backend.Version) (backend.Version, error) {
	if strings.HasPrefix(key, backend.CheckPrefix+"/") {
		s.mu.Lock()
		*s.puts++
		s.mu.Unlock()
	}
	return s.Mem.PutIf(ctx, key, data, v)
}

// An S3 store is self-tested once per store, whatever credentials file
// its URL names; file and memory stores are not tested.
func TestStoreSetChecksS3Once(t *testing.T) {
	var mu sync.Mutex
	puts := 0
	opened := 0
	open := func(_ context.Context, url string) (backend.Store, error) {
		mu.Lock()
		opened++
		mu.Unlock()
		return countingStore{backend.NewMem(), &puts, &mu}, nil
	}
	s := newStoreSet(&Options{Stores: Stores{"a": "s3://bucket/p?endpoint=http://127.0.0.1:1", "f": "mem://f"}}, t.TempDir(), open)
	defer s.close()
	if err := s.checkAll(ctx); err != nil {
		t.Fatal(err)
	}
	first := puts
	if first == 0 {
		t.Fatal("the S3 store was not self-tested")
	}
	secrets := map[string]string{"awsAccessKeyID": "AK", "awsSecretAccessKey": "SK"}
	if _, err := s.get(ctx, "a", secrets); err != nil {
		t.Fatal(err)
	}
	if _, err := s.byURL(ctx, "s3://bucket/p?credentials_file=/vol/creds&endpoint=http%3A%2F%2F127.0.0.1%3A1", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.get(ctx, "f", nil); err != nil {
		t.Fatal(err)
	}
	if puts != first {
		t.Errorf("self-test ran again: %d conditional writes, %d after the first test", puts, first)
	}
	if opened != 4 {
		t.Errorf("opened %d handles, want 4", opened)
	}
}

// A store that ignores If-Match is refused, at start (checkAll) and at
// every later open, with FailedPrecondition at the CSI edge; the handle is
// not kept.
func TestStoreSetRefusesIncompatibleStore(t *testing.T) {
	opens := 0
	open := func(context.Context, string) (backend.Store, error) {
		opens++
		return ignoresIfMatch{backend.NewMem()}, nil
	}
	s := newStoreSet(&Options{Stores: Stores{"bad": "s3://bucket/p", "ok": "mem://ok"}}, t.TempDir(), open)
	defer s.close()
	err := s.checkAll(ctx)
	if !errors.Is(err, backend.ErrIncompatible) || !strings.Contains(err.Error(), `open store "bad"`) || !strings.Contains(err.Error(), backend.CheckIfMatchStale) {
		t.Fatalf("checkAll = %v, want the bad store refused naming the failed check", err)
	}
	_, err = s.get(ctx, "bad", nil)
	if !errors.Is(err, backend.ErrIncompatible) {
		t.Fatalf("get = %v, want ErrIncompatible", err)
	}
	if c := codeOf(err); c != codes.FailedPrecondition {
		t.Errorf("code %v, want FailedPrecondition", c)
	}
	if opens != 2 {
		t.Errorf("%d opens, want 2 (each open is refused, the verdict is remembered)", opens)
	}
	if len(s.cache) != 0 {
		t.Errorf("refused handle cached: %v", s.cache)
	}
}

// A self-test that could not run (store unreachable) is not remembered:
// the next open tests again.
func TestStoreSetRetriesUnreachableCheck(t *testing.T) {
	down := true
	open := func(context.Context, string) (backend.Store, error) {
		if down {
			return failingPut{backend.NewMem()}, nil
		}
		return backend.NewMem(), nil
	}
	s := newStoreSet(&Options{Stores: Stores{"a": "s3://bucket/p"}}, t.TempDir(), open)
	defer s.close()
	if err := s.checkAll(ctx); err != nil {
		t.Fatalf("checkAll with the store unreachable = %v, want nil (logged only)", err)
	}
	if _, err := s.get(ctx, "a", nil); err == nil || errors.Is(err, backend.ErrIncompatible) {
		t.Fatalf("get while unreachable = %v, want the store's error", err)
	}
	down = false
	if _, err := s.get(ctx, "a", nil); err != nil {
		t.Fatalf("get once reachable = %v", err)
	}
}

type failingPut struct{ *backend.Mem }

func (failingPut) Put(context.Context, string, []byte) error { return errors.New("connection refused") }
