package backend_test

import (
	"context"
	"errors"
	"testing"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend/backendtest"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/vfs"
)

// The counting wrapper is a store like any other, and keeps the file
// store's batched durability.
func TestCountingConformance(t *testing.T) {
	t.Parallel()
	backendtest.Run(t, func(t *testing.T) backend.Store {
		s, err := backend.NewFile(vfs.Default, t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		c, _ := backend.Count(s)
		if _, ok := c.(backend.BatchPutter); !ok {
			t.Fatal("the counting wrapper of a file store is not a BatchPutter")
		}
		return c
	})
}

// failing fails Delete, and repeats every List once (as a store that
// retries would) before failing it.
type failing struct{ backend.Store }

var errBroken = errors.New("broken")

func (f failing) Delete(context.Context, string) error { return errBroken }
func (f failing) List(ctx context.Context, _ string) ([]string, error) {
	backend.NoteRetry(ctx)
	return nil, errBroken
}

func TestCountingCounts(t *testing.T) {
	ctx := context.Background()
	s, st := backend.Count(failing{backend.NewMem()})
	if _, ok := s.(backend.BatchPutter); ok {
		t.Fatal("the counting wrapper of a memory store claims to be a BatchPutter")
	}
	if err := s.Put(ctx, "a", []byte("x")); err != nil {
		t.Fatal(err)
	}
	v, err := s.PutIf(ctx, "b", []byte("y"), "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutIf(ctx, "b", []byte("z"), v); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutIf(ctx, "b", []byte("z"), "stale"); !errors.Is(err, backend.ErrPrecondition) {
		t.Fatal(err)
	}
	s.Get(ctx, "a")
	s.Get(ctx, "missing")
	s.GetRange(ctx, "a", 0, 1)
	s.Delete(ctx, "a")
	s.List(ctx, "")
	s.List(ctx, "")
	got := st.Snapshot()
	want := map[string][3]uint64{ // ok, errors, retries
		backend.OpPut: {1, 0, 0}, backend.OpPutIfNoneMatch: {1, 0, 0}, backend.OpPutIfMatch: {2, 0, 0},
		backend.OpGet: {3, 0, 0}, backend.OpDelete: {0, 1, 0}, backend.OpList: {0, 2, 2}, backend.OpSync: {0, 0, 0},
	}
	for op, w := range want {
		g := got[op]
		if [3]uint64{g.OK, g.Errors, g.Retries} != w {
			t.Errorf("%s: ok %d errors %d retries %d, want %v", op, g.OK, g.Errors, g.Retries, w)
		}
		if g.Seconds.Count != w[0]+w[1] {
			t.Errorf("%s: %d latencies observed, want %d", op, g.Seconds.Count, w[0]+w[1])
		}
	}
}
