package chunk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

func sample(n int) []byte {
	var b Builder
	b.Reset()
	for i := 0; i < n; i++ {
		b.Add(uint64(100+i*3), uint64(i+1), bytes.Repeat([]byte{byte(i)}, BlockSize))
	}
	return append([]byte(nil), b.Finish("vol", 42)...)
}

func TestRoundTrip(t *testing.T) {
	for _, n := range []int{1, 7, MaxBlocks} {
		c := sample(n)
		if int64(len(c)) != Size(n) {
			t.Fatalf("size %d, want %d", len(c), Size(n))
		}
		h, idx, err := Decode(c)
		if err != nil {
			t.Fatal(err)
		}
		if h.ID != 42 || h.Count != n || h.Volume != "vol" || idx[n-1].Block != uint64(100+(n-1)*3) {
			t.Fatalf("decoded %+v %+v", h, idx[n-1])
		}
		// The index alone (a ranged read) verifies too.
		if _, err := DecodeIndex(c[IndexOffset(n):], 42, n); err != nil {
			t.Fatal(err)
		}
		if _, err := DecodeIndex(c[IndexOffset(n):], 43, n); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("wrong id: %v", err)
		}
	}
}

func TestEveryByteIsChecked(t *testing.T) {
	c := sample(3)
	for pos := 0; pos < len(c); pos += 97 {
		if pos >= 32+3 && pos < HeaderSize-4 {
			continue // header padding is covered by the header CRC too
		}
		b := append([]byte(nil), c...)
		b[pos] ^= 0x10
		if _, _, err := Decode(b); err == nil {
			t.Fatalf("flip at %d not detected", pos)
		}
	}
	b := append([]byte(nil), c...)
	b[8] = 3
	if _, _, err := Decode(b); !errors.Is(err, ErrVersion) {
		t.Fatalf("version: %v", err)
	}
}

func FuzzDecodeChunk(f *testing.F) {
	f.Add(sample(1))
	f.Add(sample(2)[:5000])
	f.Fuzz(func(t *testing.T, b []byte) {
		checkChunk(t, b)
		checkChunk(t, repairCRCs(b))
	})
}

// repairCRCs recomputes a chunk's header, index, footer and block CRCs where
// its layout allows, so the fuzzer reaches the checks behind them.
func repairCRCs(b []byte) []byte {
	c := append([]byte(nil), b...)
	if len(c) < HeaderSize {
		return c
	}
	binary.LittleEndian.PutUint32(c[HeaderSize-4:], crc(c[:HeaderSize-4]))
	n := int(binary.LittleEndian.Uint32(c[12:]))
	if n < 1 || n > MaxBlocks || int64(len(c)) != Size(n) {
		return c
	}
	idx := c[IndexOffset(n) : IndexOffset(n)+int64(n)*EntrySize]
	for i := 0; i < n; i++ {
		binary.LittleEndian.PutUint32(idx[i*EntrySize+16:], crc(c[DataOffset(i):DataOffset(i)+BlockSize]))
	}
	f := c[len(c)-FooterSize:]
	binary.LittleEndian.PutUint32(f[12:], crc(idx))
	binary.LittleEndian.PutUint32(f[28:], crc(f[:28]))
	return c
}

func checkChunk(t *testing.T, b []byte) {
	h, idx, err := Decode(b)
	if err != nil {
		if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrVersion) {
			t.Fatalf("unexpected error class: %v", err)
		}
		return
	}
	if len(idx) != h.Count {
		t.Fatalf("index of %d for %d blocks", len(idx), h.Count)
	}
}
