package viperblock_test

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/internal/testutil"
	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/vfs"
)

// quietStore records the backend calls made while armed.
type quietStore struct {
	backend.Store
	armed atomic.Bool
	mu    sync.Mutex
	calls []string
}

func (q *quietStore) note(op, key string) {
	if q.armed.Load() {
		q.mu.Lock()
		q.calls = append(q.calls, op+" "+key)
		q.mu.Unlock()
	}
}

func (q *quietStore) Get(ctx context.Context, key string) ([]byte, backend.Version, error) {
	q.note("get", key)
	return q.Store.Get(ctx, key)
}

func (q *quietStore) GetRange(ctx context.Context, key string, off, n int64) ([]byte, error) {
	q.note("getrange", key)
	return q.Store.GetRange(ctx, key, off, n)
}

func (q *quietStore) Put(ctx context.Context, key string, data []byte) error {
	q.note("put", key)
	return q.Store.Put(ctx, key, data)
}

func (q *quietStore) PutIf(ctx context.Context, key string, data []byte, v backend.Version) (backend.Version, error) {
	q.note("putif", key)
	return q.Store.PutIf(ctx, key, data, v)
}

func (q *quietStore) Delete(ctx context.Context, key string) error {
	q.note("delete", key)
	return q.Store.Delete(ctx, key)
}

func (q *quietStore) List(ctx context.Context, prefix string) ([]string, error) {
	q.note("list", prefix)
	return q.Store.List(ctx, prefix)
}

// With DeferBackground, a writable Open that replayed a WAL full of
// undrained writes opens no file and makes no backend call until Start:
// the window a host such as nbdkit needs quiet (it re-points stdin and
// stdout right after opening the plugin's volume). Start then drains.
func TestDeferBackground(t *testing.T) {
	ctx := context.Background()
	store := &quietStore{Store: backend.NewMem()}
	var fileOps atomic.Int64
	var armed atomic.Bool
	o := opts(t)
	// The first open must not drain (that would leave nothing to replay);
	// the second drains every 5 ms once started.
	o.DrainInterval = time.Hour
	o.FS = vfs.Error(vfs.Default, func(op vfs.Op, name string) error {
		if armed.Load() {
			fileOps.Add(1)
			t.Logf("file %s %s while deferred", op, name)
		}
		return nil
	})

	// Leave a WAL with pending writes behind, as a killed server does.
	data := bytes.Repeat([]byte("deferred"), 8*vb.BlockSize/8)
	v := mustCreate(t, store, "v", 64<<20, o)
	for i := int64(0); i < 64; i++ {
		if _, err := v.WriteAt(data, i*int64(len(data))); err != nil {
			t.Fatal(err)
		}
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	vb.ForgetForTest(v)

	o.DeferBackground = true
	o.DrainInterval = 5 * time.Millisecond
	v, err := vb.Open(ctx, store, "v", o)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if st := v.Stats(); st.Replayed == 0 || st.PendingBytes == 0 {
		t.Fatalf("nothing replayed: %+v", st)
	}
	armed.Store(true)
	store.armed.Store(true)
	// Not synchronisation: let 40 drain intervals pass and prove that
	// nothing happened in them.
	time.Sleep(200 * time.Millisecond)
	armed.Store(false)
	store.armed.Store(false)
	if n := fileOps.Load(); n != 0 {
		t.Errorf("%d file operations between Open and Start", n)
	}
	if len(store.calls) != 0 {
		t.Errorf("backend calls between Open and Start: %v", store.calls)
	}
	if st := v.Stats(); st.Drains != 0 {
		t.Errorf("%d drains before Start", st.Drains)
	}

	v.Start()
	v.Start() // idempotent
	testutil.Eventually(t, time.Minute, "Start to drain", func() (bool, error) {
		st := v.Stats()
		return st.PendingBytes == 0, fmt.Errorf("%+v", st)
	})
	got := make([]byte, len(data))
	if _, err := v.ReadAt(got, 63*int64(len(data))); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back after the drain: %v", err)
	}
}

// A volume closed without ever being started still drains everything.
func TestDeferBackgroundCloseWithoutStart(t *testing.T) {
	ctx := context.Background()
	store := backend.NewMem()
	o := opts(t)
	o.DeferBackground = true
	v := mustCreate(t, store, "v", 16<<20, o)
	data := bytes.Repeat([]byte{7}, 1<<20)
	if _, err := v.WriteAt(data, 3<<20); err != nil {
		t.Fatal(err)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	v.Start() // after Close: starts nothing
	o2 := opts(t)
	v2, err := vb.Open(ctx, store, "v", o2)
	if err != nil {
		t.Fatal(err)
	}
	defer v2.Close()
	got := make([]byte, len(data))
	if _, err := v2.ReadAt(got, 3<<20); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back on another node: %v", err)
	}
}
