package backend_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/vfs"
)

// checkPasses runs backend.Check on s and wants every check passed and
// nothing left under CheckPrefix.
func checkPasses(t *testing.T, s backend.Store) {
	t.Helper()
	ctx := context.Background()
	rep, err := backend.Check(ctx, s)
	if err != nil {
		t.Fatalf("Check: %v\nreport: %+v", err, rep)
	}
	if !rep.OK() || rep.Failed() != nil {
		t.Fatalf("report not OK: %+v", rep)
	}
	names := map[string]bool{}
	for _, r := range rep.Results {
		names[r.Name] = true
	}
	for _, n := range []string{backend.CheckCreateIfAbsent, backend.CheckIfNoneMatch, backend.CheckIfMatchStale,
		backend.CheckIfMatchRight, backend.CheckReadBack, backend.CheckRangedGet, backend.CheckList, "cleanup"} {
		if !names[n] {
			t.Errorf("check %s did not run: %+v", n, rep.Results)
		}
	}
	if left, err := s.List(ctx, backend.CheckPrefix+"/"); err != nil || len(left) > 0 {
		t.Errorf("left behind: %q, %v", left, err)
	}
}

func TestCheckMem(t *testing.T) { checkPasses(t, backend.NewMem()) }

func TestCheckFile(t *testing.T) {
	s, err := backend.NewFile(vfs.Default, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	checkPasses(t, s)
}

func TestCheckPrefixed(t *testing.T) {
	s, err := backend.Prefixed(backend.NewMem(), "some/prefix")
	if err != nil {
		t.Fatal(err)
	}
	checkPasses(t, s)
}

// careless is a store that ignores the conditions of PutIf, one or both.
type careless struct {
	backend.Store
	ignoreIfNoneMatch, ignoreIfMatch bool
}

func (c careless) PutIf(ctx context.Context, key string, data []byte, v backend.Version) (backend.Version, error) {
	if v == "" && c.ignoreIfNoneMatch || v != "" && c.ignoreIfMatch {
		if err := c.Store.Put(ctx, key, data); err != nil {
			return "", err
		}
		_, nv, err := c.Store.Get(ctx, key)
		return nv, err
	}
	return c.Store.PutIf(ctx, key, data, v)
}

// A store that ignores either condition fails the check that exercises
// it, with ErrIncompatible, and still has its test objects removed.
func TestCheckRefusesCarelessStores(t *testing.T) {
	for _, tc := range []struct {
		name     string
		st       careless
		failedAt string
	}{
		{"if-none-match ignored", careless{ignoreIfNoneMatch: true}, backend.CheckIfNoneMatch},
		{"if-match ignored", careless{ignoreIfMatch: true}, backend.CheckIfMatchStale},
		{"both ignored", careless{ignoreIfNoneMatch: true, ignoreIfMatch: true}, backend.CheckIfNoneMatch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mem := backend.NewMem()
			tc.st.Store = mem
			rep, err := backend.Check(context.Background(), tc.st)
			if !errors.Is(err, backend.ErrIncompatible) {
				t.Fatalf("Check = %v, want ErrIncompatible", err)
			}
			if !strings.Contains(err.Error(), tc.failedAt) {
				t.Errorf("error %q does not name check %s", err, tc.failedAt)
			}
			if f := rep.Failed(); f == nil || f.Name != tc.failedAt || rep.OK() {
				t.Errorf("report's failed check = %+v, want %s", f, tc.failedAt)
			}
			last := rep.Results[len(rep.Results)-1]
			if last.Name != "cleanup" || !last.OK {
				t.Errorf("last result %+v, want a successful cleanup", last)
			}
			if left, _ := mem.List(context.Background(), ""); len(left) > 0 {
				t.Errorf("left behind: %q", left)
			}
		})
	}
}

// lossy fails every request: Check reports the store's error, not
// ErrIncompatible, and names the first check.
type lossy struct{ backend.Store }

var errDown = errors.New("connection refused")

func (lossy) Put(context.Context, string, []byte) error { return errDown }

func TestCheckUnreachable(t *testing.T) {
	rep, err := backend.Check(context.Background(), lossy{backend.NewMem()})
	if !errors.Is(err, errDown) || errors.Is(err, backend.ErrIncompatible) {
		t.Fatalf("Check = %v, want the store's error and not ErrIncompatible", err)
	}
	if f := rep.Failed(); f == nil || f.Name != "put" {
		t.Errorf("failed check %+v, want put", f)
	}
}

// A check whose context is cancelled still deletes what it wrote.
func TestCheckCancelledCleansUp(t *testing.T) {
	mem := backend.NewMem()
	ctx, cancel := context.WithCancel(context.Background())
	st := cancelAfterPut{Store: mem, cancel: cancel}
	_, err := backend.Check(ctx, st)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Check = %v, want context.Canceled", err)
	}
	if left, _ := mem.List(context.Background(), ""); len(left) > 0 {
		t.Errorf("left behind: %q", left)
	}
}

type cancelAfterPut struct {
	backend.Store
	cancel func()
}

func (c cancelAfterPut) PutIf(ctx context.Context, key string, data []byte, v backend.Version) (backend.Version, error) {
	nv, err := c.Store.PutIf(ctx, key, data, v)
	c.cancel()
	return nv, err
}
