package backend_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand"
	"testing"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/vfs"
)

// The file store's batched puts: an object put unsynced is readable at once
// and whole; a crash before Sync may lose it; after Sync it survives one.
func TestFilePutUnsyncedThenSync(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewMem()
	s, err := backend.NewFile(fs, "/store")
	if err != nil {
		t.Fatal(err)
	}
	bp, ok := backend.Store(s).(backend.BatchPutter)
	if !ok {
		t.Fatal("the file store is not a BatchPutter")
	}
	a := bytes.Repeat([]byte("a"), 10000)
	b := bytes.Repeat([]byte("b"), 20000)
	if err := bp.PutUnsynced(ctx, "v/chunks/1", a); err != nil {
		t.Fatal(err)
	}
	if err := bp.PutUnsynced(ctx, "v/chunks/2", b); err != nil {
		t.Fatal(err)
	}
	if got, _, err := s.Get(ctx, "v/chunks/1"); err != nil || !bytes.Equal(got, a) {
		t.Fatalf("read an unsynced object: %v", err)
	}

	// A crash now: each object is either absent or (with the crash
	// keeping none of the unsynced data) not whole; the store still
	// opens and lists.
	lost := fs.CrashClone(rand.New(rand.NewSource(1)))
	ls, err := backend.NewFile(lost, "/store")
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"v/chunks/1", "v/chunks/2"} {
		got, _, err := ls.Get(ctx, key)
		if err == nil && bytes.Equal(got, map[string][]byte{"v/chunks/1": a, "v/chunks/2": b}[key]) {
			continue // survived by chance: allowed
		}
		if err != nil && !errors.Is(err, backend.ErrNotFound) {
			t.Fatalf("after a crash before Sync, %s: %v", key, err)
		}
	}

	if err := bp.Sync(ctx, []string{"v/chunks/1", "v/chunks/2"}); err != nil {
		t.Fatal(err)
	}
	for i := int64(0); i < 5; i++ {
		c, err := backend.NewFile(fs.CrashClone(rand.New(rand.NewSource(i))), "/store")
		if err != nil {
			t.Fatal(err)
		}
		for key, want := range map[string][]byte{"v/chunks/1": a, "v/chunks/2": b} {
			if got, _, err := c.Get(ctx, key); err != nil || !bytes.Equal(got, want) {
				t.Fatalf("after Sync and a crash, %s: %v", key, err)
			}
		}
	}

	// Bad input: an invalid key, a key never put.
	if err := bp.Sync(ctx, []string{"../x"}); !errors.Is(err, backend.ErrInvalidKey) {
		t.Fatalf("Sync of an invalid key: %v", err)
	}
	if err := bp.PutUnsynced(ctx, "../x", a); !errors.Is(err, backend.ErrInvalidKey) {
		t.Fatalf("PutUnsynced of an invalid key: %v", err)
	}
	if err := bp.Sync(ctx, []string{"v/chunks/3"}); err == nil {
		t.Fatal("Sync of a missing object succeeded")
	}
}

// The same on the real filesystem (sync_file_range, fsync).
func TestFilePutUnsyncedOS(t *testing.T) {
	ctx := context.Background()
	s, err := backend.NewFile(vfs.Default, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte{9}, 4<<20)
	if err := s.PutUnsynced(ctx, "v/chunks/1", data); err != nil {
		t.Fatal(err)
	}
	if err := s.Sync(ctx, []string{"v/chunks/1"}); err != nil {
		t.Fatal(err)
	}
	if got, _, err := s.Get(ctx, "v/chunks/1"); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back: %v", err)
	}
}
