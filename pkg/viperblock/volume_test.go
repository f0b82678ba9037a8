package viperblock_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand"
	"testing"

	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/vfs"
)

func opts(t *testing.T) vb.Options {
	return vb.Options{WALDir: t.TempDir(), CacheBlocks: 256}
}

func mustCreate(t *testing.T, s backend.Store, name string, size int64, o vb.Options) *vb.Volume {
	t.Helper()
	v, err := vb.Create(context.Background(), s, name, size, o)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestRoundTripAcrossNodes: written, drained and closed on one node, the
// volume opens on another (a fresh WAL directory, its own store client) with
// every write.
func TestRoundTripAcrossNodes(t *testing.T) {
	forEachStore(t, testRoundTripAcrossNodes)
}

func testRoundTripAcrossNodes(t *testing.T, newStore func(t *testing.T) backend.Store) {
	ctx := context.Background()
	s := newStore(t)
	v := mustCreate(t, s, "vol1", 64<<20, opts(t))
	rng := rand.New(rand.NewSource(1))
	want := make([]byte, 64<<20)
	for i := 0; i < 500; i++ {
		n := 1 + rng.Intn(3*vb.BlockSize)
		off := rng.Int63n(int64(len(want) - n))
		p := make([]byte, n)
		rng.Read(p)
		if _, err := v.WriteAt(p, off); err != nil {
			t.Fatal(err)
		}
		copy(want[off:], p)
	}
	check := func(v *vb.Volume) {
		t.Helper()
		got := make([]byte, len(want))
		if _, err := v.ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatal("volume content differs")
		}
	}
	check(v)
	if err := v.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	check(v)
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	// Another node: a fresh WAL directory and its own store client.
	v2, err := vb.Open(ctx, newStore(t), "vol1", opts(t))
	if err != nil {
		t.Fatal(err)
	}
	check(v2)
	if v2.Epoch() != 2 {
		t.Fatalf("epoch %d, want 2", v2.Epoch())
	}
	if st := v2.Stats(); st.BackendReads == 0 {
		t.Fatalf("the new node read nothing from the backend: %+v", st)
	}
	if err := v2.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestBadInput(t *testing.T) {
	ctx := context.Background()
	s := backend.NewMem()
	for _, name := range []string{"", "../x", "a/b", ".hidden", "x\x00"} {
		if _, err := vb.Create(ctx, s, name, 1<<20, opts(t)); !errors.Is(err, vb.ErrInvalidName) {
			t.Errorf("Create(%q): %v, want ErrInvalidName", name, err)
		}
	}
	if _, err := vb.Create(ctx, s, "v", 0, opts(t)); !errors.Is(err, vb.ErrInvalidArg) {
		t.Errorf("size 0: %v", err)
	}
	v := mustCreate(t, s, "v", 1<<20, opts(t))
	defer v.Close()
	if _, err := vb.Create(ctx, s, "v", 1<<20, opts(t)); !errors.Is(err, vb.ErrExists) {
		t.Errorf("duplicate: %v", err)
	}
	if _, err := v.WriteAt(make([]byte, 4096), 1<<20); !errors.Is(err, vb.ErrOutOfRange) {
		t.Errorf("write past end: %v", err)
	}
	if _, err := v.ReadAt(make([]byte, 2), 1<<20-1); !errors.Is(err, vb.ErrOutOfRange) {
		t.Errorf("read past end: %v", err)
	}
	if _, err := v.WriteAt(make([]byte, 1), -1); !errors.Is(err, vb.ErrOutOfRange) {
		t.Errorf("negative offset: %v", err)
	}
	if _, err := vb.Open(ctx, s, "missing", opts(t)); !errors.Is(err, vb.ErrNotFound) {
		t.Errorf("open missing: %v", err)
	}
	_ = vfs.Default
}

type slogLogger = slog.Logger

var quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))
