package viperblock_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

const rbBlocks = 512 // blocks in the test volumes (2 MiB)

// rbModel is what a volume should read back: block -> content (missing:
// zeros).
type rbModel map[int64][]byte

// rbWrite writes n random blocks at random places (with repeats), draining
// every 16 writes so they spread over many chunks.
func rbWrite(t *testing.T, v *vb.Volume, m rbModel, rng *rand.Rand, n int) {
	t.Helper()
	for i := range n {
		b := rng.Int64N(rbBlocks)
		p := make([]byte, vb.BlockSize)
		for j := range p {
			p[j] = byte(rng.Uint32())
		}
		if _, err := v.WriteAt(p, b*vb.BlockSize); err != nil {
			t.Fatal(err)
		}
		m[b] = p
		if i%16 == 15 {
			if err := v.Drain(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// rbVerify opens the volume read-only and compares every block with m.
func rbVerify(t *testing.T, s backend.Store, name string, m rbModel) {
	t.Helper()
	v, err := vb.Open(context.Background(), s, name, vb.Options{ReadOnly: true, CacheBlocks: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	zero := make([]byte, vb.BlockSize)
	got := make([]byte, vb.BlockSize)
	bad := 0
	for b := int64(0); b < rbBlocks; b++ {
		if _, err := v.ReadAt(got, b*vb.BlockSize); err != nil {
			t.Fatal(err)
		}
		want := m[b]
		if want == nil {
			want = zero
		}
		if !bytes.Equal(got, want) {
			bad++
		}
	}
	if bad > 0 {
		t.Fatalf("%s: %d of %d blocks differ from the model after the rebuild", name, bad, rbBlocks)
	}
}

// rbHistory builds a volume written by three owners in turn (three epochs),
// compacted once in the middle and snapshotted, and returns its model.
func rbHistory(t *testing.T, s backend.Store, name string, seed uint64) rbModel {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 1))
	t.Logf("seed %d", seed)
	m := rbModel{}
	ctx := context.Background()
	if err := vb.CreateOnly(ctx, s, name, rbBlocks*vb.BlockSize); err != nil {
		t.Fatal(err)
	}
	for owner := range 3 {
		v, err := vb.Open(ctx, s, name, vb.Options{WALDir: t.TempDir(), CacheBlocks: -1})
		if err != nil {
			t.Fatal(err)
		}
		rbWrite(t, v, m, rng, 200)
		switch owner {
		case 0:
			if _, err := v.Snapshot(ctx, "snap"); err != nil {
				t.Fatal(err)
			}
		case 1:
			if _, err := v.GC(ctx); err != nil {
				t.Fatal(err)
			}
		}
		rbWrite(t, v, m, rng, 50)
		if err := v.Close(); err != nil {
			t.Fatal(err)
		}
	}
	return m
}

func damage(t *testing.T, s backend.Store, key string) {
	t.Helper()
	raw, _, err := s.Get(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	raw[len(raw)/2] ^= 0x40
	if err := s.Put(context.Background(), key, raw); err != nil {
		t.Fatal(err)
	}
}

// TestRebuildLostManifest deletes a volume's manifest: Check reports it
// missing, Rebuild makes a manifest from the chunks that reads back as the
// model, and Check then finds the volume (and its snapshot) intact.
func TestRebuildLostManifest(t *testing.T) {
	ctx := context.Background()
	s := backend.NewMem()
	m := rbHistory(t, s, "v", 1)
	if err := s.Delete(ctx, "v/manifest"); err != nil {
		t.Fatal(err)
	}
	if _, err := vb.Check(ctx, s, "v", vb.CheckOptions{}); !errors.Is(err, vb.ErrNotFound) {
		t.Fatalf("Check of a volume without a manifest = %v, want ErrNotFound", err)
	}
	rep, err := vb.Rebuild(ctx, s, "v", vb.RebuildOptions{Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("rebuilt: %+v", rep)
	rbVerify(t, s, "v", m)
	cr, err := vb.Check(ctx, s, "v", vb.CheckOptions{})
	if err != nil || !cr.OK() || cr.Snapshots != 1 {
		t.Fatalf("Check after the rebuild: %+v, %v", cr, err)
	}
	// The rebuilt volume takes a new owner and its writes.
	v, err := vb.Open(ctx, s, "v", vb.Options{WALDir: t.TempDir(), CacheBlocks: -1})
	if err != nil {
		t.Fatal(err)
	}
	rbWrite(t, v, m, rand.New(rand.NewPCG(9, 9)), 40)
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	rbVerify(t, s, "v", m)
}

// TestRebuildCorruptManifest damages a manifest: Check reports it, Rebuild
// keeps a copy and replaces it, and refuses to touch a good one.
func TestRebuildCorruptManifest(t *testing.T) {
	ctx := context.Background()
	s := backend.NewMem()
	m := rbHistory(t, s, "v", 2)
	damage(t, s, "v/manifest")
	cr, err := vb.Check(ctx, s, "v", vb.CheckOptions{})
	if err != nil || cr.OK() || cr.Manifest != nil || !strings.Contains(cr.Problems[0], "manifest is corrupt") {
		t.Fatalf("Check of a damaged manifest: %+v, %v", cr, err)
	}
	rep, err := vb.Rebuild(ctx, s, "v", vb.RebuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Get(ctx, rep.KeptBroken); err != nil || !strings.HasPrefix(rep.KeptBroken, "v/manifest.broken-") {
		t.Errorf("damaged manifest kept at %q: %v", rep.KeptBroken, err)
	}
	rbVerify(t, s, "v", m)
	if cr, err := vb.Check(ctx, s, "v", vb.CheckOptions{}); err != nil || !cr.OK() {
		t.Fatalf("Check after the rebuild: %+v, %v", cr, err)
	}
	before, _, _ := s.Get(ctx, "v/manifest")
	if _, err := vb.Rebuild(ctx, s, "v", vb.RebuildOptions{}); !errors.Is(err, vb.ErrIntact) {
		t.Fatalf("Rebuild of a good manifest = %v, want ErrIntact", err)
	}
	if after, _, _ := s.Get(ctx, "v/manifest"); !bytes.Equal(before, after) {
		t.Fatal("Rebuild changed a good manifest")
	}
}

// TestRebuildClone rebuilds a clone's manifest: the blocks it never wrote
// come from its parent snapshot, found through the dependency marker.
func TestRebuildClone(t *testing.T) {
	ctx := context.Background()
	s := backend.NewMem()
	pm := rbHistory(t, s, "src", 3)
	if err := vb.Clone(ctx, s, "src", "snap", "c", 0); err != nil {
		t.Fatal(err)
	}
	// The clone reads the snapshot (taken after the first owner's 200
	// writes), not src's head: build its model from the snapshot.
	cm := rbModel{}
	sv, err := vb.Open(ctx, s, "c", vb.Options{ReadOnly: true, CacheBlocks: -1})
	if err != nil {
		t.Fatal(err)
	}
	for b := int64(0); b < rbBlocks; b++ {
		p := make([]byte, vb.BlockSize)
		if _, err := sv.ReadAt(p, b*vb.BlockSize); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(p, make([]byte, vb.BlockSize)) {
			cm[b] = p
		}
	}
	sv.Close()
	v, err := vb.Open(ctx, s, "c", vb.Options{WALDir: t.TempDir(), CacheBlocks: -1})
	if err != nil {
		t.Fatal(err)
	}
	rbWrite(t, v, cm, rand.New(rand.NewPCG(4, 4)), 100)
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "c/manifest"); err != nil {
		t.Fatal(err)
	}
	rep, err := vb.Rebuild(ctx, s, "c", vb.RebuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Parent != "src@snap" {
		t.Errorf("parent %q, want src@snap", rep.Parent)
	}
	rbVerify(t, s, "c", cm)
	rbVerify(t, s, "src", pm)
	if cr, err := vb.Check(ctx, s, "c", vb.CheckOptions{}); err != nil || !cr.OK() {
		t.Fatalf("Check after the rebuild: %+v, %v", cr, err)
	}
}

// TestRebuildRefusesLiveOwner: while an owner renews the volume's lease,
// Rebuild refuses (ErrInUse) and writes nothing.
func TestRebuildRefusesLiveOwner(t *testing.T) {
	ctx := context.Background()
	s := backend.NewMem()
	v, err := vb.Create(ctx, s, "v", rbBlocks*vb.BlockSize, vb.Options{WALDir: t.TempDir(), CacheBlocks: -1, LeaseDuration: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	rbWrite(t, v, rbModel{}, rand.New(rand.NewPCG(5, 5)), 32)
	damage(t, s, "v/manifest")
	before, _, _ := s.Get(ctx, "v/manifest")
	if _, err := vb.Rebuild(ctx, s, "v", vb.RebuildOptions{LeaseWait: 2 * time.Second}); !errors.Is(err, vb.ErrInUse) {
		t.Fatalf("Rebuild under a live owner = %v, want ErrInUse", err)
	}
	if after, _, _ := s.Get(ctx, "v/manifest"); !bytes.Equal(before, after) {
		t.Fatal("a refused Rebuild changed the manifest")
	}
}
