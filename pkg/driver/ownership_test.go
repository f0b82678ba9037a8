package driver

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

// The engine's read-only ownership view and its stale-WAL quarantine, as
// the node uses them.
func TestOwnershipHelpers(t *testing.T) {
	ctx := context.Background()
	store := backend.NewMem()
	if err := vb.CreateOnly(ctx, store, "v", 16<<20); err != nil {
		t.Fatal(err)
	}
	wa, wb := t.TempDir(), t.TempDir()
	if _, found, err := vb.WALOwnedBy(nil, wa, "v", 0, [16]byte{}); found || err != nil {
		t.Fatalf("OWNER of a WAL never written: found %v, %v", found, err)
	}
	pa := &pausableStore{Store: store} // node A's view of the store
	a, err := vb.Open(ctx, pa, "v", vb.Options{WALDir: wa, CacheBlocks: -1, DrainInterval: time.Hour, LeaseDuration: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.WriteAt(bytes.Repeat([]byte{1}, vb.BlockSize), 0); err != nil {
		t.Fatal(err)
	}
	if err := a.Flush(); err != nil {
		t.Fatal(err)
	}
	epoch, nonce, err := vb.Owner(ctx, store, "v")
	if err != nil || epoch != a.Epoch() {
		t.Fatalf("Owner = %d, %v; want epoch %d", epoch, err, a.Epoch())
	}
	if owned, found, err := vb.WALOwnedBy(nil, wa, "v", epoch, nonce); !owned || !found || err != nil {
		t.Fatalf("the owner's own WAL: owned %v found %v %v", owned, found, err)
	}
	if _, err := vb.QuarantineStaleWAL(ctx, store, nil, wa, "v"); !errors.Is(err, vb.ErrInUse) {
		t.Fatalf("quarantine of a WAL open in this process: %v, want ErrInUse", err)
	}

	pa.paused.Store(true) // A stops answering; B waits its lease out
	b, err := vb.Open(ctx, store, "v", vb.Options{WALDir: wb, CacheBlocks: -1})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); !errors.Is(err, vb.ErrFenced) {
		t.Fatalf("close of the old owner: %v, want fenced", err)
	}
	epoch, nonce, err = vb.Owner(ctx, store, "v")
	if err != nil || epoch != b.Epoch() {
		t.Fatalf("Owner = %d, %v; want the new owner's epoch %d", epoch, err, b.Epoch())
	}
	if owned, found, err := vb.WALOwnedBy(nil, wa, "v", epoch, nonce); owned || !found || err != nil {
		t.Fatalf("the old owner's WAL after a takeover: owned %v found %v %v", owned, found, err)
	}
	if owned, _, _ := vb.WALOwnedBy(nil, wb, "v", epoch, nonce); !owned {
		t.Fatal("the new owner's WAL is not its own")
	}
	dir, err := vb.QuarantineStaleWAL(ctx, store, nil, wa, "v")
	if err != nil || dir == "" {
		t.Fatalf("quarantine of a stale WAL: %q, %v", dir, err)
	}
	var live, stale int
	for _, s := range walSegments(t, filepath.Join(wa, "v")) {
		if strings.HasPrefix(s, filepath.Base(dir)+string(filepath.Separator)) {
			stale++
		} else {
			live++
		}
	}
	if live != 0 || stale == 0 {
		t.Fatalf("after quarantine: %d live segments, %d quarantined", live, stale)
	}
	if dir, err := vb.QuarantineStaleWAL(ctx, store, nil, wa, "v"); dir != "" || err != nil {
		t.Fatalf("second quarantine: %q, %v", dir, err)
	}
	// The new owner's WAL is never set aside.
	if dir, err := vb.QuarantineStaleWAL(ctx, store, nil, wb, "v"); dir != "" || !errors.Is(err, vb.ErrInUse) {
		t.Fatalf("quarantine of the open owner's WAL: %q, %v", dir, err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if dir, err := vb.QuarantineStaleWAL(ctx, store, nil, wb, "v"); dir != "" || err != nil {
		t.Fatalf("quarantine of the current owner's WAL: %q, %v", dir, err)
	}
	if dir, err := vb.QuarantineStaleWAL(ctx, store, nil, t.TempDir(), "v"); dir != "" || err != nil {
		t.Fatalf("quarantine without a WAL: %q, %v", dir, err)
	}
}
