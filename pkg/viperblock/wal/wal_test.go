package wal

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"os"
	"testing"
)

const testSalt = 0x5A17C0DE

// encodeSample returns three version 2 records of a segment with salt salt
// and sequence numbers from seq0+1.
func encodeSample(salt uint32, seq0 uint64) []byte {
	data := bytes.Repeat([]byte{0xAB}, BlockSize)
	buf := make([]byte, 2*BlockRecordLen+HeaderSize)
	PutBlock(buf, salt, seq0+1, 7, data)
	PutTrim(buf[BlockRecordLen:], salt, seq0+2, 100, 16)
	PutBlock(buf[BlockRecordLen+HeaderSize:], salt, seq0+3, 8, data)
	return buf
}

func encodeSampleV1() []byte {
	data := bytes.Repeat([]byte{0xAB}, BlockSize)
	buf := make([]byte, 2*BlockRecordLen+HeaderSize)
	PutBlockV1(buf, 1, 7, data)
	PutTrimV1(buf[BlockRecordLen:], 2, 100, 16)
	PutBlockV1(buf[BlockRecordLen+HeaderSize:], 3, 8, data)
	return buf
}

func v2(salt uint32) SegmentHeader { return SegmentHeader{Version: Version, Salt: salt, Volume: "v"} }

var hv1 = SegmentHeader{Version: Version1, Volume: "v"}

// readAll reads a segment body; off is where the log stops.
func readAll(h SegmentHeader, b []byte) (recs []Record, off int, err error) {
	s := NewSegment(h, b)
	for {
		r, _, err := s.Next()
		if err == io.EOF {
			return recs, s.Offset(), nil
		}
		if err != nil {
			return recs, s.Offset(), err
		}
		recs = append(recs, r)
	}
}

func TestRoundTrip(t *testing.T) {
	for _, c := range []struct {
		h SegmentHeader
		b []byte
	}{{v2(testSalt), encodeSample(testSalt, 0)}, {hv1, encodeSampleV1()}} {
		recs, _, err := readAll(c.h, c.b)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) != 3 || recs[0].Block != 7 || recs[1].Type != TypeTrim || recs[1].Count != 16 || recs[2].Seq != 3 {
			t.Fatalf("v%d: decoded %+v", c.h.Version, recs)
		}
	}
	h := SegmentHeader{Version: Version, Shard: 5, Epoch: 9, Generation: 77, Salt: testSalt, Volume: "vol-1"}
	enc := AppendSegmentHeader(nil, h)
	if len(enc) != segFixedV2+len(h.Volume)+4 {
		t.Fatalf("header length %d", len(enc))
	}
	got, n, err := DecodeSegmentHeader(append(enc, 1, 2, 3))
	if err != nil || n != len(enc) || got != h {
		t.Fatalf("header %+v %d %v", got, n, err)
	}
	h1 := SegmentHeader{Version: Version1, Shard: 5, Epoch: 9, Generation: 77, Volume: "vol-1"}
	enc = AppendSegmentHeaderV1(nil, h1)
	got, n, err = DecodeSegmentHeader(enc)
	if err != nil || n != len(enc) || got != h1 {
		t.Fatalf("v1 header %+v %d %v", got, n, err)
	}
}

// Segment files written by the version 1 encoder (testdata/v1-*.seg, made
// by the build before version 2) still read.
func TestV1Files(t *testing.T) {
	for _, c := range []struct {
		file string
		torn bool
	}{{"testdata/v1-clean.seg", false}, {"testdata/v1-torn.seg", true}} {
		b, err := os.ReadFile(c.file)
		if err != nil {
			t.Fatal(err)
		}
		h, n, err := DecodeSegmentHeader(b)
		if err != nil || h.Version != Version1 || h.Volume != "vol-v1" || h.Shard != 3 || h.Epoch != 2 || h.Generation != 5 {
			t.Fatalf("%s: header %+v %v", c.file, h, err)
		}
		recs, _, err := readAll(h, b[n:])
		if c.torn != errors.Is(err, ErrTornTail) || (!c.torn && err != nil) {
			t.Fatalf("%s: %v", c.file, err)
		}
		if len(recs) != 3 || recs[0].Seq != 10 || recs[0].Block != 3 || recs[0].Data[0] != 0x11 ||
			recs[1].Type != TypeTrim || recs[1].Block != 19 || recs[1].Count != 32 || recs[2].Block != 35 || recs[2].Data[4095] != 0x22 {
			t.Fatalf("%s: records %+v", c.file, recs)
		}
	}
}

// Every truncation of the log is a clean end or a torn tail, never
// corruption, in both versions, and so is any fill after the last record:
// zeros (preallocated space) or, in version 2, the records of the file's
// previous life.
func TestTornTail(t *testing.T) {
	old := encodeSample(0x01020304, 0) // a previous life: other salt, lower sequence numbers
	old = append(old, encodeSample(0x01020304, 3)...)
	for _, c := range []struct {
		h    SegmentHeader
		full []byte
	}{{v2(testSalt), encodeSample(testSalt, 10)}, {hv1, encodeSampleV1()}} {
		for cut := 0; cut < len(c.full); cut++ {
			_, _, err := readAll(c.h, c.full[:cut])
			if err != nil && !errors.Is(err, ErrTornTail) {
				t.Fatalf("v%d cut at %d: %v, want torn tail", c.h.Version, cut, err)
			}
			if c.h.Version == Version1 {
				continue
			}
			// The same cut over a recycled file: the new records overwrite
			// the start of the old ones.
			b := append([]byte(nil), old...)
			copy(b, c.full[:cut])
			recs, _, err := readAll(c.h, b)
			if err != nil && !errors.Is(err, ErrTornTail) {
				t.Fatalf("recycled, cut at %d: %v, want torn tail or end", cut, err)
			}
			for _, r := range recs {
				if r.Seq <= 10 {
					t.Fatalf("recycled, cut at %d: stale record %+v read", cut, r)
				}
			}
		}
		_, _, err := readAll(c.h, append(c.full, make([]byte, 5000)...))
		if c.h.Version == Version1 && !errors.Is(err, ErrTornTail) || c.h.Version == Version && err != nil {
			t.Fatalf("v%d zero fill: %v", c.h.Version, err)
		}
	}
	// The whole new life followed by the rest of the old one: a clean end
	// exactly after the new records.
	full := encodeSample(testSalt, 10)
	b := append(append([]byte(nil), full...), old...)
	recs, off, err := readAll(v2(testSalt), b)
	if err != nil || len(recs) != 3 || off != len(full) {
		t.Fatalf("recycled: %d records, end %d, %v", len(recs), off, err)
	}
	// A stale record whose salt equals the new one (a collision) still
	// ends the log: its sequence number is below the new life's.
	b = append(append([]byte(nil), full...), encodeSample(testSalt, 0)...)
	if recs, off, err := readAll(v2(testSalt), b); err != nil || len(recs) != 3 || off != len(full) {
		t.Fatalf("salt collision: %d records, end %d, %v", len(recs), off, err)
	}
}

// A bad byte in a record followed by a live record is corruption.
func TestCorruption(t *testing.T) {
	for _, c := range []struct {
		h    SegmentHeader
		full []byte
	}{{v2(testSalt), encodeSample(testSalt, 0)}, {hv1, encodeSampleV1()}} {
		for _, pos := range []int{0, 3, 4, 9, 20, 28, 100, BlockRecordLen - 1, BlockRecordLen + 3} {
			b := append([]byte(nil), c.full...)
			b[pos] ^= 0x40
			recs, _, err := readAll(c.h, b)
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("v%d flip at %d: %v (%d records), want corruption", c.h.Version, pos, err, len(recs))
			}
		}
		// The same flip in the final record is a torn tail: it may be a
		// write that never completed.
		b := append([]byte(nil), c.full...)
		b[len(b)-1] ^= 1
		if _, _, err := readAll(c.h, b); !errors.Is(err, ErrTornTail) {
			t.Fatalf("v%d flip in last record: %v", c.h.Version, err)
		}
	}
	// Version 2: a bad record of this life, followed by stale records of
	// the previous one, is a torn tail; followed by a live record after
	// the stale ones, corruption.
	full := encodeSample(testSalt, 10)
	full[len(full)-1] ^= 1
	stale := encodeSample(0x0F0F0F0F, 0)
	if _, _, err := readAll(v2(testSalt), append(append([]byte(nil), full...), stale...)); !errors.Is(err, ErrTornTail) {
		t.Fatalf("torn before stale: %v", err)
	}
	live := make([]byte, HeaderSize)
	PutTrim(live, testSalt, 99, 1, 1)
	if _, _, err := readAll(v2(testSalt), append(append(append([]byte(nil), full...), stale...), live...)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("live record after a torn one: %v", err)
	}
	// A record whose salt was damaged, with live ones after it.
	b := encodeSample(testSalt, 10)
	b[0] ^= 1
	if _, _, err := readAll(v2(testSalt), b); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("damaged salt: %v", err)
	}

	h := AppendSegmentHeader(nil, v2(testSalt))
	h[20] ^= 1
	if _, _, err := DecodeSegmentHeader(h); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("header flip: %v", err)
	}
	h = AppendSegmentHeader(nil, v2(testSalt))
	h[8] = 9
	if _, _, err := DecodeSegmentHeader(h); !errors.Is(err, ErrVersion) {
		t.Fatalf("version: %v", err)
	}
	h = AppendSegmentHeader(nil, v2(0))
	if _, _, err := DecodeSegmentHeader(h); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("zero salt: %v", err)
	}
	// A preallocated file whose header never reached the disk.
	if _, _, err := DecodeSegmentHeader(make([]byte, 4096)); !errors.Is(err, ErrTornTail) {
		t.Fatalf("zero header: %v", err)
	}
}

// DecodeAny reads records of both versions and any salt, and refuses
// anything else.
func TestDecodeAny(t *testing.T) {
	b := append(encodeSample(testSalt, 0), encodeSampleV1()...)
	b = append(b, encodeSample(0x77777777, 5)...)
	var n int
	for off := 0; off < len(b); n++ {
		_, k, err := DecodeAny(b[off:])
		if err != nil {
			t.Fatalf("record %d: %v", n, err)
		}
		off += k
	}
	if n != 9 {
		t.Fatalf("%d records", n)
	}
	for _, pos := range []int{0, 4, 30, 100} {
		c := append([]byte(nil), b...)
		c[pos] ^= 0x10
		if _, _, err := DecodeAny(c); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("flip at %d: %v", pos, err)
		}
	}
	if _, _, err := DecodeAny(make([]byte, HeaderSize)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("zeros: %v", err)
	}
}

func FuzzDecodeRecord(f *testing.F) {
	full := encodeSampleV1()
	f.Add(full)
	f.Add(full[:40])
	f.Add(full[BlockRecordLen:])
	f.Add(encodeSample(testSalt, 0))
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
	salt := uint32(testSalt)
	if len(b) >= 4 && ValidSalt(binary.LittleEndian.Uint32(b)) {
		salt = binary.LittleEndian.Uint32(b)
	}
	for _, h := range []SegmentHeader{hv1, v2(salt)} {
		recs, off, err := readAll(h, b)
		if err != nil && !errors.Is(err, ErrTornTail) && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("unexpected error class: %v", err)
		}
		if off > len(b) {
			t.Fatalf("log end %d beyond %d bytes", off, len(b))
		}
		var prev uint64
		for _, r := range recs {
			if r.Type == TypeBlock && len(r.Data) != BlockSize {
				t.Fatalf("block record with %d bytes", len(r.Data))
			}
			if r.Type == TypeTrim && r.Count == 0 {
				t.Fatalf("trim of zero blocks read")
			}
			if h.Version == Version && r.Seq <= prev {
				t.Fatalf("v2 sequence %d after %d", r.Seq, prev)
			}
			prev = r.Seq
		}
	}
	_, _, _ = DecodeAny(b)
}

func FuzzDecodeSegmentHeader(f *testing.F) {
	f.Add(AppendSegmentHeader(nil, SegmentHeader{Shard: 3, Epoch: 1, Generation: 2, Salt: 9, Volume: "vol"}))
	f.Add(AppendSegmentHeaderV1(nil, SegmentHeader{Shard: 3, Epoch: 1, Generation: 2, Volume: "vol"}))
	f.Add([]byte("VBWALSEG"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, n, err := DecodeSegmentHeader(b)
		if err != nil {
			return
		}
		if n > len(b) {
			t.Fatalf("length %d beyond input %d", n, len(b))
		}
		re := AppendSegmentHeader(nil, h)
		if h.Version == Version1 {
			re = AppendSegmentHeaderV1(nil, h)
		}
		if !bytes.Equal(re, b[:n]) {
			t.Fatalf("re-encoding differs")
		}
	})
}
