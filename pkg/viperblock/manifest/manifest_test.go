package manifest

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
	"reflect"
	"testing"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/blockmap"
)

func sample() *Manifest {
	m := &Manifest{Flags: FlagOpen, Size: 1 << 30, Epoch: 3, SeqHW: 99, Committed: 12345, Request: 7,
		Name: "vol", Parent: "base@snap1", Label: "", Refs: []string{"base"},
		Extents: []blockmap.Extent{{Start: 0, Count: 10, Chunk: 1, Off: 0}, {Start: 20, Count: 5, Vol: 1, Chunk: 2, Off: 3}}}
	m.Owner[0] = 7
	m.SetChunks(map[blockmap.ChunkRef]uint32{{ID: 1}: 10, {Vol: 1, ID: 2}: 8, {ID: 3}: 4})
	return m
}

func TestRoundTrip(t *testing.T) {
	m := sample()
	if len(m.Chunks) != 2 || m.Chunks[1] != (Chunk{Vol: 1, ID: 2, Blocks: 8, Live: 5}) {
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
	m.Extents[1].Vol = 2 // no such volume-table entry
	if _, err := Decode(Encode(m)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("bad volume index: %v", err)
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
		check(t, b)
		// Again with the CRC repaired, so the fuzzer reaches the semantic
		// checks behind it.
		if len(b) >= 4 {
			c := append([]byte(nil), b...)
			binary.LittleEndian.PutUint32(c[len(c)-4:], crc32.Checksum(c[:len(c)-4], castagnoli))
			check(t, c)
		}
	})
}

func check(t *testing.T, b []byte) {
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
}
