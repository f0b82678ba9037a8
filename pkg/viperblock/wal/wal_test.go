package wal

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"testing"
)

func encodeSample() []byte {
	data := bytes.Repeat([]byte{0xAB}, BlockSize)
	buf := make([]byte, 2*BlockRecordLen+HeaderSize)
	PutBlock(buf, 1, 7, data)
	PutTrim(buf[BlockRecordLen:], 2, 100, 16)
	PutBlock(buf[BlockRecordLen+HeaderSize:], 3, 8, data)
	return buf
}

func decodeAll(b []byte) ([]Record, error) {
	var out []Record
	for {
		r, n, err := Decode(b)
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, r)
		b = b[n:]
	}
}

func TestRoundTrip(t *testing.T) {
	recs, err := decodeAll(encodeSample())
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 3 || recs[0].Block != 7 || recs[1].Type != TypeTrim || recs[1].Count != 16 || recs[2].Seq != 3 {
		t.Fatalf("decoded %+v", recs)
	}
	h := SegmentHeader{Shard: 5, Epoch: 9, Generation: 77, Volume: "vol-1"}
	enc := AppendSegmentHeader(nil, h)
	got, n, err := DecodeSegmentHeader(append(enc, 1, 2, 3))
	if err != nil || n != len(enc) || got != h {
		t.Fatalf("header %+v %d %v", got, n, err)
	}
}

// Every truncation of the log is a clean end or a torn tail, never corruption.
func TestTornTail(t *testing.T) {
	full := encodeSample()
	for cut := 0; cut < len(full); cut++ {
		_, err := decodeAll(full[:cut])
		if err != nil && !errors.Is(err, ErrTornTail) {
			t.Fatalf("cut at %d: %v, want torn tail", cut, err)
		}
	}
	// Zero fill after the last record (preallocated space) is a torn tail.
	if _, err := decodeAll(append(full, make([]byte, 5000)...)); !errors.Is(err, ErrTornTail) {
		t.Fatalf("zero fill: %v", err)
	}
}

// A bad byte in a record followed by more data is corruption.
func TestCorruption(t *testing.T) {
	full := encodeSample()
	for _, pos := range []int{0, 4, 9, 20, 28, 100, BlockRecordLen - 1, BlockRecordLen + 3} {
		b := append([]byte(nil), full...)
		b[pos] ^= 0x40
		recs, err := decodeAll(b)
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("flip at %d: %v (%d records), want corruption", pos, err, len(recs))
		}
	}
	// The same flip in the final record is a torn tail: it may be a write
	// that never completed.
	b := append([]byte(nil), full...)
	b[len(b)-1] ^= 1
	if _, err := decodeAll(b); !errors.Is(err, ErrTornTail) {
		t.Fatalf("flip in last record: %v", err)
	}
	h := AppendSegmentHeader(nil, SegmentHeader{Volume: "v"})
	h[20] ^= 1
	if _, _, err := DecodeSegmentHeader(h); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("header flip: %v", err)
	}
	h = AppendSegmentHeader(nil, SegmentHeader{Volume: "v"})
	h[8] = 9
	if _, _, err := DecodeSegmentHeader(h); !errors.Is(err, ErrVersion) {
		t.Fatalf("version: %v", err)
	}
}

func FuzzDecodeRecord(f *testing.F) {
	full := encodeSample()
	f.Add(full)
	f.Add(full[:40])
	f.Add(full[BlockRecordLen:])
	f.Fuzz(func(t *testing.T, b []byte) {
		checkRecords(t, b)
		// Again with the first record's CRC repaired, to reach the checks
		// behind it.
		if len(b) >= HeaderSize {
			c := append([]byte(nil), b...)
			n := HeaderSize
			if c[4] == TypeBlock && len(c) >= BlockRecordLen {
				n = BlockRecordLen
			}
			crc := crc32.Update(CRC(c[:28]), castagnoli, c[HeaderSize:n])
			binary.LittleEndian.PutUint32(c[28:], crc)
			checkRecords(t, c)
		}
	})
}

func checkRecords(t *testing.T, b []byte) {
	recs, err := decodeAll(b)
	if err != nil && !errors.Is(err, ErrTornTail) && !errors.Is(err, ErrCorrupt) {
		t.Fatalf("unexpected error class: %v", err)
	}
	for _, r := range recs {
		if r.Type == TypeBlock && len(r.Data) != BlockSize {
			t.Fatalf("block record with %d bytes", len(r.Data))
		}
	}
}

func FuzzDecodeSegmentHeader(f *testing.F) {
	f.Add(AppendSegmentHeader(nil, SegmentHeader{Shard: 3, Epoch: 1, Generation: 2, Volume: "vol"}))
	f.Add([]byte("VBWALSEG"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, n, err := DecodeSegmentHeader(b)
		if err != nil {
			return
		}
		if n > len(b) {
			t.Fatalf("length %d beyond input %d", n, len(b))
		}
		if re := AppendSegmentHeader(nil, h); !bytes.Equal(re, b[:n]) {
			t.Fatalf("re-encoding differs")
		}
	})
}
