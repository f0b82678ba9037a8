package viperblock_test

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

// A snapshot taken from outside includes what the owner wrote but had not
// drained, and an expansion from outside reaches the open volume.
func TestOwnerRequests(t *testing.T) {
	ctx := context.Background()
	s := backend.NewMem()
	o := opts(t)
	o.DrainInterval = 50 * time.Millisecond
	o.DrainBytes = 1 << 40
	v := mustCreate(t, s, "v", 1<<20, o)
	defer v.Close()
	// Let a periodic drain pass, then write: the data sits in the WAL.
	if _, err := v.WriteAt(fill(9, 4096), 8192); err != nil {
		t.Fatal(err)
	}
	// The owner polls every 50 ms and answers at once; the generous waits
	// are for a loaded machine (without an answer the snapshot would lack
	// the write after OwnerWait).
	start := time.Now()
	inf, err := vb.CreateSnapshot(ctx, s, "v", "snap", vb.SnapshotOptions{OwnerWait: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if time.Since(start) > 30*time.Second {
		t.Fatalf("owner took %s to answer", time.Since(start))
	}
	sv, err := vb.OpenSnapshot(ctx, s, "v", "snap", vb.Options{})
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	if _, err := sv.ReadAt(got, 8192); err != nil || !bytes.Equal(got, fill(9, 4096)) {
		t.Fatalf("snapshot lacks the owner's undrained write (%v)", err)
	}
	if inf.WrittenBytes != 4096 {
		t.Fatalf("snapshot info %+v", inf)
	}
	// Idempotent.
	if again, err := vb.CreateSnapshot(ctx, s, "v", "snap", vb.SnapshotOptions{}); err != nil || again.Created != inf.Created {
		t.Fatalf("second create: %+v %v", again, err)
	}
	// Grow while open.
	n, err := vb.Expand(ctx, s, "v", 3<<20, time.Minute)
	if err != nil || n != 3<<20 {
		t.Fatalf("expand: %d %v", n, err)
	}
	if v.Size() != 3<<20 {
		t.Fatalf("open volume size %d after expand", v.Size())
	}
	if _, err := v.WriteAt(fill(1, 4096), 3<<20-4096); err != nil {
		t.Fatal(err)
	}
	if _, err := vb.Expand(ctx, s, "v", 1<<20, time.Second); !errors.Is(err, vb.ErrInvalidArg) {
		t.Fatalf("shrink: %v", err)
	}
	// Grow while closed.
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	if n, err := vb.Expand(ctx, s, "v", 5<<20, time.Second); err != nil || n != 5<<20 {
		t.Fatalf("offline expand: %d %v", n, err)
	}
	if inf, _ := vb.Inspect(ctx, s, "v"); inf.Size != 5<<20 || inf.Open {
		t.Fatalf("after close and expand: %+v", inf)
	}
}

// A dead owner (open flag set, nobody polling) does not block a snapshot
// forever: after OwnerWait it snapshots the committed state.
func TestSnapshotDeadOwner(t *testing.T) {
	ctx := context.Background()
	s := backend.NewMem()
	v := mustCreate(t, s, "v", 1<<20, opts(t))
	v.WriteAt(fill(3, 4096), 0)
	v.Drain(ctx)
	v.WriteAt(fill(4, 4096), 0) // flushed to the WAL only, then the node dies
	v.Flush()
	vb.ForgetForTest(v)
	inf, err := vb.CreateSnapshot(ctx, s, "v", "s", vb.SnapshotOptions{OwnerWait: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	sv, _ := vb.OpenSnapshot(ctx, s, "v", "s", vb.Options{})
	got := make([]byte, 4096)
	sv.ReadAt(got, 0)
	if !bytes.Equal(got, fill(3, 4096)) || inf.Name != "s" {
		t.Fatal("snapshot of a dead owner's volume is not its last committed state")
	}
}
