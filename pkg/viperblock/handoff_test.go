package viperblock_test

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/seal"
)

// handoffExists reports whether vol's handoff object is in the store.
func handoffExists(t *testing.T, s backend.Store, vol string) bool {
	t.Helper()
	_, _, err := s.Get(context.Background(), vol+"/handoff")
	if err != nil && !errors.Is(err, backend.ErrNotFound) {
		t.Fatal(err)
	}
	return err == nil
}

func mustWrite(t *testing.T, v *vb.Volume, b byte, block int64, flush bool) {
	t.Helper()
	if _, err := v.WriteAt(fill(b, vb.BlockSize), block*vb.BlockSize); err != nil {
		t.Fatal(err)
	}
	if flush {
		if err := v.Flush(); err != nil {
			t.Fatal(err)
		}
	}
}

// A standby opened beside a serving owner takes nothing: the owner goes
// on writing and flushing. Its handoff drains the owner (flushed writes,
// unflushed ones, and writes made while the standby waited), and the
// standby becomes the owner with the next epoch; the old owner's writes,
// flushes and reads fail from then on.
func TestStandbyHandoff(t *testing.T) { forEachStore(t, testStandbyHandoff) }

func testStandbyHandoff(t *testing.T, newStore func(t *testing.T) backend.Store) {
	ctx := context.Background()
	// A long lease, so that a renewal period (d/4) is far longer than a
	// drain on a busy disk or S3 server: the bound below then tells the
	// two apart on a slow machine too.
	const d = 8 * time.Second
	a := mustCreate(t, newStore(t), "v", 1<<20, leaseOpts(t, d))
	defer a.Close()
	mustWrite(t, a, 1, 0, true)
	mustWrite(t, a, 2, 1, false)
	s, err := vb.OpenStandby(ctx, newStore(t), "v", leaseOpts(t, d))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Size() != 1<<20 || s.Name() != "v" {
		t.Fatalf("standby reports %s, %d bytes", s.Name(), s.Size())
	}
	if !handoffExists(t, newStore(t), "v") {
		t.Fatal("the standby did not announce itself")
	}
	// The owner serves on while the standby waits (and starts watching
	// at its next renewal, every d/4).
	time.Sleep(d / 2)
	mustWrite(t, a, 3, 2, true)
	mustWrite(t, a, 4, 3, false)
	if st := a.Stats(); st.Fenced {
		t.Fatal("a standby open fenced the owner")
	}
	start := time.Now()
	b, err := s.Handoff(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	// The owner watches the standby closely: the handoff is its drain,
	// not a renewal period (d/4) nor an expiry (1.2 d).
	if took := time.Since(start); took > d/4 {
		t.Errorf("handoff took %s; want well under a renewal period (%s)", took, d/4)
	}
	if b.Epoch() <= a.Epoch() {
		t.Fatalf("the new owner's epoch %d is not above the old owner's %d", b.Epoch(), a.Epoch())
	}
	got := readAll(t, b)
	for i, want := range []byte{1, 2, 3, 4} {
		if !bytes.Equal(got[i*vb.BlockSize:(i+1)*vb.BlockSize], fill(want, vb.BlockSize)) {
			t.Fatalf("block %d after the handoff does not hold the old owner's write %d", i, want)
		}
	}
	if _, err := a.WriteAt(fill(9, vb.BlockSize), 0); !errors.Is(err, vb.ErrFenced) {
		t.Fatalf("write on the old owner after the handoff: %v; want ErrFenced", err)
	}
	if err := a.Flush(); !errors.Is(err, vb.ErrFenced) {
		t.Fatalf("flush on the old owner after the handoff: %v; want ErrFenced", err)
	}
	if _, err := a.ReadAt(make([]byte, vb.BlockSize), 0); !errors.Is(err, vb.ErrFenced) {
		t.Fatalf("read on the old owner after the handoff: %v; want ErrFenced (it would be stale)", err)
	}
	mustWrite(t, b, 5, 0, true)
	if _, err := s.Handoff(ctx); !errors.Is(err, vb.ErrHandedOff) {
		t.Fatalf("second handoff: %v; want ErrHandedOff", err)
	}
	if handoffExists(t, newStore(t), "v") {
		t.Fatal("the handoff object outlived the handoff")
	}
	if err := a.Close(); err != nil {
		t.Fatalf("close of the old owner: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	c, err := vb.Open(ctx, newStore(t), "v", leaseOpts(t, d))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := readAll(t, c); !bytes.Equal(got[:vb.BlockSize], fill(5, vb.BlockSize)) {
		t.Fatal("the new owner's write is not in the store after its close")
	}
}

// noOwnerLease is TestStandbyNoOwner's lease: long, so that a handoff
// that waited for one would stand out from a slow but immediate one.
const noOwnerLease = 10 * time.Second

// A volume that nobody has open hands off at once; a closed standby
// removes its object and refuses to hand off.
func TestStandbyNoOwner(t *testing.T) {
	ctx := context.Background()
	store := backend.NewMem()
	a := mustCreate(t, store, "v", 1<<20, leaseOpts(t, noOwnerLease))
	mustWrite(t, a, 7, 0, false)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := vb.OpenStandby(ctx, store, "nope", leaseOpts(t, noOwnerLease)); !errors.Is(err, vb.ErrNotFound) {
		t.Fatalf("standby open of a missing volume: %v; want ErrNotFound", err)
	}
	o := leaseOpts(t, noOwnerLease)
	o.ReadOnly = true
	if _, err := vb.OpenStandby(ctx, store, "v", o); !errors.Is(err, vb.ErrInvalidArg) {
		t.Fatalf("read-only standby: %v; want ErrInvalidArg", err)
	}
	o = leaseOpts(t, noOwnerLease)
	o.WALDir = ""
	if _, err := vb.OpenStandby(ctx, store, "v", o); !errors.Is(err, vb.ErrNeedsWALDir) {
		t.Fatalf("standby without a WAL directory: %v; want ErrNeedsWALDir", err)
	}
	s, err := vb.OpenStandby(ctx, store, "v", leaseOpts(t, noOwnerLease))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if handoffExists(t, store, "v") {
		t.Fatal("a closed standby left its handoff object")
	}
	if _, err := s.Handoff(ctx); !errors.Is(err, vb.ErrClosed) {
		t.Fatalf("handoff of a closed standby: %v; want ErrClosed", err)
	}
	s, err = vb.OpenStandby(ctx, store, "v", leaseOpts(t, noOwnerLease))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	start := time.Now()
	b, err := s.Handoff(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("handoff of a volume nobody has open took %s; want well under a lease (%s)", took, noOwnerLease)
	}
	if got := readAll(t, b); !bytes.Equal(got[:vb.BlockSize], fill(7, vb.BlockSize)) {
		t.Fatal("data lost")
	}
}

// Live migration back and forth: node A and node B (each its own WAL
// directory) take the volume from each other, each writing before it
// hands over; the epoch rises with every handoff and nothing is lost.
func TestHandoffRoundTrips(t *testing.T) {
	ctx := context.Background()
	const d = time.Second
	store := backend.NewMem()
	dirs := [2]string{t.TempDir(), t.TempDir()}
	on := func(node int) vb.Options {
		o := leaseOpts(t, d)
		o.WALDir = dirs[node]
		return o
	}
	cur := mustCreate(t, store, "v", 1<<20, on(0))
	defer func() { cur.Close() }()
	const trips = 6
	for i := 0; i < 2*trips; i++ {
		mustWrite(t, cur, byte(i+1), int64(i), i%2 == 0) // every other write unflushed
		s, err := vb.OpenStandby(ctx, store, "v", on((i+1)%2))
		if err != nil {
			t.Fatal(err)
		}
		mustWrite(t, cur, byte(100+i), 100, false) // while the standby waits
		next, err := s.Handoff(ctx)
		if err != nil {
			t.Fatalf("handoff %d: %v", i, err)
		}
		s.Close()
		if next.Epoch() <= cur.Epoch() {
			t.Fatalf("handoff %d: epoch %d after %d", i, next.Epoch(), cur.Epoch())
		}
		if _, err := cur.WriteAt(fill(0xee, vb.BlockSize), 0); !errors.Is(err, vb.ErrFenced) {
			t.Fatalf("handoff %d: the old owner still writes: %v", i, err)
		}
		if err := cur.Close(); err != nil {
			t.Fatalf("handoff %d: closing the old owner: %v", i, err)
		}
		cur = next
		got := readAll(t, cur)
		for j := 0; j <= i; j++ {
			if !bytes.Equal(got[j*vb.BlockSize:(j+1)*vb.BlockSize], fill(byte(j+1), vb.BlockSize)) {
				t.Fatalf("after handoff %d block %d lost its data", i, j)
			}
		}
		if !bytes.Equal(got[100*vb.BlockSize:101*vb.BlockSize], fill(byte(100+i), vb.BlockSize)) {
			t.Fatalf("after handoff %d the write made while the standby waited is lost", i)
		}
	}
}

// The source dies mid-migration: the standby waits for its lease to
// expire, past HandoffTimeout (a dead owner does not renew), and takes
// over what the store holds: every flushed write with store durability;
// with node durability, what the dead owner had uploaded.
func TestHandoffSourceDies(t *testing.T) {
	for _, class := range []vb.Durability{vb.DurabilityStore, vb.DurabilityNode} {
		t.Run(string(class), func(t *testing.T) {
			ctx := context.Background()
			const d = time.Second
			store := backend.NewMem()
			oa := leaseOpts(t, d)
			oa.Durability = class
			a := mustCreate(t, store, "v", 1<<20, oa)
			mustWrite(t, a, 1, 0, false)
			if err := a.Drain(ctx); err != nil { // uploaded
				t.Fatal(err)
			}
			mustWrite(t, a, 2, 1, true) // flushed, not uploaded
			ost := leaseOpts(t, d)
			ost.HandoffTimeout = 300 * time.Millisecond
			s, err := vb.OpenStandby(ctx, store, "v", ost)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			vb.ForgetForTest(a) // the source's node dies
			start := time.Now()
			b, err := s.Handoff(ctx)
			if err != nil {
				t.Fatalf("handoff from a dead source: %v", err)
			}
			defer b.Close()
			took := time.Since(start)
			if took < d {
				t.Errorf("took over after %s, before the dead owner's lease (%s) could expire", took, d)
			}
			got := readAll(t, b)
			if !bytes.Equal(got[:vb.BlockSize], fill(1, vb.BlockSize)) {
				t.Fatal("the uploaded write is lost")
			}
			second := got[vb.BlockSize : 2*vb.BlockSize]
			switch class {
			case vb.DurabilityStore:
				if !bytes.Equal(second, fill(2, vb.BlockSize)) {
					t.Fatal("store durability lost a flushed write of the dead source")
				}
			case vb.DurabilityNode:
				if !bytes.Equal(second, make([]byte, vb.BlockSize)) {
					t.Fatal("node durability: the dead node's WAL-only write should not be in the store")
				}
			}
			mustWrite(t, b, 3, 0, true)
		})
	}
}

// The target dies: a standby that stops announcing itself, or a "take"
// left behind before the owner was watching, never makes the owner let
// go: it serves on, and its lease stays valid.
func TestHandoffTargetDies(t *testing.T) {
	ctx := context.Background()
	const d = 600 * time.Millisecond
	t.Run("standby", func(t *testing.T) {
		store := backend.NewMem()
		a := mustCreate(t, store, "v", 1<<20, leaseOpts(t, d))
		defer a.Close()
		s, err := vb.OpenStandby(ctx, store, "v", leaseOpts(t, d))
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(d / 2) // the owner watches
		vb.AbandonStandbyForTest(s, false)
		deadline := time.Now().Add(3 * d)
		for i := 0; time.Now().Before(deadline); i++ {
			mustWrite(t, a, byte(i), 0, true)
			time.Sleep(d / 10)
		}
	})
	t.Run("stale-take", func(t *testing.T) {
		store := backend.NewMem()
		a := mustCreate(t, store, "v", 1<<20, leaseOpts(t, d))
		defer a.Close()
		if err := vb.WriteHandoffForTest(ctx, store, "v", true, d); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(4 * d)
		for i := 0; time.Now().Before(deadline); i++ {
			mustWrite(t, a, byte(i), 0, true)
			time.Sleep(d / 10)
		}
		if st := a.Stats(); st.Fenced {
			t.Fatal("a left-behind take released the owner")
		}
		// A standby that comes later still hands off.
		s, err := vb.OpenStandby(ctx, store, "v", leaseOpts(t, d))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		b, err := s.Handoff(ctx)
		if err != nil {
			t.Fatal(err)
		}
		b.Close()
	})
}

// A live owner that cannot drain keeps the volume: Handoff fails with
// ErrInUse after HandoffTimeout and the standby stays one; once the
// owner can drain, the next Handoff succeeds.
func TestHandoffTimeout(t *testing.T) {
	ctx := context.Background()
	const d = 600 * time.Millisecond
	fd := &failingDrain{Store: backend.NewMem()}
	a := mustCreate(t, fd, "v", 1<<20, leaseOpts(t, d))
	defer a.Close()
	mustWrite(t, a, 1, 0, true)
	fd.on.Store(true)
	o := leaseOpts(t, d)
	o.HandoffTimeout = 1500 * time.Millisecond
	s, err := vb.OpenStandby(ctx, fd.Store, "v", o)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	start := time.Now()
	if _, err := s.Handoff(ctx); !errors.Is(err, vb.ErrInUse) {
		t.Fatalf("handoff from an owner that cannot drain: %v; want ErrInUse", err)
	}
	if took := time.Since(start); took < o.HandoffTimeout || took > o.HandoffTimeout+5*time.Second {
		t.Errorf("the failed handoff took %s; want about %s", took, o.HandoffTimeout)
	}
	mustWrite(t, a, 2, 0, true)
	if !handoffExists(t, fd.Store, "v") {
		t.Fatal("the standby stopped announcing itself after a failed handoff")
	}
	fd.on.Store(false)
	b, err := s.Handoff(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if got := readAll(t, b); !bytes.Equal(got[:vb.BlockSize], fill(2, vb.BlockSize)) {
		t.Fatal("data lost")
	}
}

// Reads on a standby (a node probing the new device) do not take the
// volume: the owner commits for each, so they return every write it had
// acknowledged, flushed or not, and it serves on.
func TestStandbyReadsFresh(t *testing.T) {
	ctx := context.Background()
	const d = time.Second
	store := backend.NewMem()
	a := mustCreate(t, store, "v", 1<<20, leaseOpts(t, d))
	defer a.Close()
	os := leaseOpts(t, d)
	os.HandoffTimeout = 4 * time.Second // the owner answers at once, even on a busy machine
	s, err := vb.OpenStandby(ctx, store, "v", os)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	buf := make([]byte, 2*vb.BlockSize)
	for i := 1; i <= 5; i++ {
		mustWrite(t, a, byte(i), 0, false)
		mustWrite(t, a, byte(i+100), 1, i%2 == 0)
		n, v, err := s.ReadAt(ctx, buf, 0)
		if err != nil || n != len(buf) || v != nil {
			t.Fatalf("read %d on the standby: %d bytes, handed over %v, %v", i, n, v != nil, err)
		}
		if !bytes.Equal(buf[:vb.BlockSize], fill(byte(i), vb.BlockSize)) || !bytes.Equal(buf[vb.BlockSize:], fill(byte(i+100), vb.BlockSize)) {
			t.Fatalf("read %d on the standby returned stale data", i)
		}
		ext, v, err := s.Extents(ctx, 0, 1<<20)
		if err != nil || v != nil || len(ext) == 0 || ext[0].Zero || ext[0].Length != 2*vb.BlockSize {
			t.Fatalf("extents on the standby: %+v, %v", ext, err)
		}
	}
	mustWrite(t, a, 9, 2, true)
	if st := a.Stats(); st.Fenced {
		t.Fatal("reads on the standby took the volume")
	}
	// A dead owner does not answer: the read hands over (after the
	// lease expires) and is served by the new owner.
	mustWrite(t, a, 10, 3, true)
	vb.PauseLeaseForTest(a)
	n, v, err := s.ReadAt(ctx, buf, 0)
	if err != nil || n != len(buf) || v == nil {
		t.Fatalf("read with a dead owner: %d bytes, handed over %v, %v", n, v != nil, err)
	}
	defer v.Close()
	if !bytes.Equal(buf[:vb.BlockSize], fill(5, vb.BlockSize)) {
		t.Fatal("read after a takeover from a dead owner returned the wrong data")
	}
}

// An encrypted volume: a standby without the right key is refused before
// it announces anything; with it, the standby reads (through its own view
// of the committed state) and takes the volume over.
func TestStandbyEncrypted(t *testing.T) {
	ctx := context.Background()
	const d = time.Second
	store := backend.NewMem()
	k1, k2 := testKEK(1), testKEK(2)
	if err := vb.CreateVolume(ctx, store, "v", 1<<20, vb.CreateOptions{Keys: k1, Compression: vb.CompressionLZ4}); err != nil {
		t.Fatal(err)
	}
	oa := leaseOpts(t, d)
	oa.Keys = k1
	a, err := vb.Open(ctx, store, "v", oa)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	mustWrite(t, a, 1, 0, true)
	for _, k := range []vb.KeySource{nil, k2} {
		o := leaseOpts(t, d)
		o.Keys = k
		if _, err := vb.OpenStandby(ctx, store, "v", o); !errors.Is(err, vb.ErrKey) {
			t.Fatalf("standby with key %v: %v", k, err)
		}
		if handoffExists(t, store, "v") {
			t.Fatal("a refused standby announced itself")
		}
	}
	o := leaseOpts(t, d)
	o.Keys = k1
	s, err := vb.OpenStandby(ctx, store, "v", o)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	buf := make([]byte, vb.BlockSize)
	if _, v, err := s.ReadAt(ctx, buf, 0); err != nil || v != nil || !bytes.Equal(buf, fill(1, vb.BlockSize)) {
		t.Fatalf("read on the standby: handed over %v, %v", v != nil, err)
	}
	mustWrite(t, a, 2, 1, false)
	b, err := s.Handoff(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	got := readAll(t, b)
	if !bytes.Equal(got[:vb.BlockSize], fill(1, vb.BlockSize)) || !bytes.Equal(got[vb.BlockSize:2*vb.BlockSize], fill(2, vb.BlockSize)) {
		t.Fatal("the new owner lacks the old owner's writes")
	}
}

func testKEK(b byte) vb.KeySource {
	var k [seal.KeySize]byte
	for i := range k {
		k[i] = b
	}
	return seal.NewFileSource(k, "test")
}
