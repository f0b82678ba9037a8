package manifest

import (
	"errors"
	"reflect"
	"testing"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/blockmap"
)

func sample() *Manifest {
	m := &Manifest{Size: 1 << 30, Epoch: 3, SeqHW: 99, Name: "vol", Parent: "base@snap1",
		Extents: []blockmap.Extent{{Start: 0, Count: 10, Chunk: 1, Off: 0}, {Start: 20, Count: 5, Chunk: 2, Off: 3}}}
	m.Owner[0] = 7
	m.SetChunks(map[uint64]uint32{1: 10, 2: 8, 3: 4})
	return m
}

func TestRoundTrip(t *testing.T) {
	m := sample()
	if len(m.Chunks) != 2 || m.Chunks[1] != (Chunk{ID: 2, Blocks: 8, Live: 5}) {
		t.Fatalf("chunk table %+v", m.Chunks)
	}
	got, err := Decode(Encode(m))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, m) {
		t.Fatalf("got %+v\nwant %+v", got, m)
	}
}

func TestRejects(t *testing.T) {
	b := Encode(sample())
	for pos := 0; pos < len(b); pos++ {
		c := append([]byte(nil), b...)
		c[pos] ^= 0x01
		if _, err := Decode(c); err == nil {
			t.Fatalf("flip at %d accepted", pos)
		}
	}
	// Semantically bad content with a good CRC: an extent past the chunk end.
	m := sample()
	m.Extents[1].Off = 5
	if _, err := Decode(Encode(m)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("extent past chunk end: %v", err)
	}
	m = sample()
	m.Extents[1].Start = 5 // overlaps the first
	if _, err := Decode(Encode(m)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("overlap: %v", err)
	}
}

func FuzzDecodeManifest(f *testing.F) {
	f.Add(Encode(sample()))
	f.Add(Encode(&Manifest{Size: 4096, Name: "x"}))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Decode(b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrVersion) {
				t.Fatalf("unexpected error class: %v", err)
			}
			return
		}
		if _, err := Decode(Encode(m)); err != nil {
			t.Fatalf("re-encoded manifest rejected: %v", err)
		}
	})
}
