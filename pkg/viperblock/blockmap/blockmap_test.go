package blockmap

import (
	"math/rand"
	"testing"
)

func TestOverlayReadable(t *testing.T) {
	m := New(nil).Overlay([]Extent{{Start: 0, Count: 10, Chunk: 1, Off: 0}})
	m = m.Overlay([]Extent{{Start: 3, Count: 2, Chunk: 2, Off: 0}, {Start: 8, Count: 4, Chunk: 0}})
	m = m.Overlay([]Extent{{Start: 5, Count: 1, Chunk: 1, Off: 5}}) // rejoins chunk 1's run? no: 3-4 are chunk 2
	want := "[0+3]=1@0\n[3+2]=2@0\n[5+3]=1@5\n"
	if got := m.String(); got != want {
		t.Fatalf("got\n%swant\n%s", got, want)
	}
	// A 10-block sequential write is one extent.
	var ops []Extent
	seq := New(nil)
	for b := uint64(0); b < 10; b++ {
		ops = append(ops, Extent{Start: 100 + b, Count: 1, Chunk: 9, Off: uint32(b)})
	}
	seq = seq.Overlay(ops)
	if seq.Len() != 1 || seq.String() != "[100+10]=9@0\n" {
		t.Fatalf("sequential write: %s", seq)
	}
}

// TestOverlayModel compares Overlay with a per-block model.
func TestOverlayModel(t *testing.T) {
	seed := int64(rand.Uint32())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewSource(seed))
	const n = 200
	type loc struct {
		chunk ChunkRef
		off   uint32
	}
	model := make([]loc, n)
	m := New(nil)
	for round := 0; round < 500; round++ {
		var ops []Extent
		b := uint64(rng.Intn(20))
		for b < n {
			c := uint32(1 + rng.Intn(15))
			if b+uint64(c) > n {
				c = uint32(n - b)
			}
			e := Extent{Start: b, Count: c}
			if rng.Intn(3) > 0 {
				e.Vol, e.Chunk, e.Off = uint32(rng.Intn(2)), uint64(1+rng.Intn(5)), uint32(rng.Intn(100))
			}
			ops = append(ops, e)
			for i := uint64(0); i < uint64(c); i++ {
				if e.Chunk == 0 {
					model[b+i] = loc{}
				} else {
					model[b+i] = loc{e.Ref(), e.Off + uint32(i)}
				}
			}
			b += uint64(c) + uint64(rng.Intn(30))
		}
		m = m.Overlay(ops)
		if err := Validate(m.Extents(), n); err != nil {
			t.Fatalf("round %d: %v\n%s", round, err, m)
		}
		for i := uint64(0); i < n; i++ {
			c, off, ok := m.Lookup(i)
			if w := model[i]; (w.chunk.ID != 0) != ok || c != w.chunk || (ok && off != w.off) {
				t.Fatalf("round %d block %d: got %d@%d %v, want %+v", round, i, c, off, ok, w)
			}
		}
		// Adjacent extents that could merge never remain split.
		ext := m.Extents()
		for i := 1; i < len(ext); i++ {
			p := ext[i-1]
			if p.End() == ext[i].Start && p.Ref() == ext[i].Ref() && p.Off+p.Count == ext[i].Off {
				t.Fatalf("unmerged extents %v %v", p, ext[i])
			}
		}
	}
}
