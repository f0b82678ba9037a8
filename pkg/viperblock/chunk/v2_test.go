package chunk

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/seal"
)

func buildV2(t testing.TB, n int, fill func(i int, d []byte), p Params) ([]byte, [][]byte) {
	t.Helper()
	var b Builder
	b.Reset()
	var want [][]byte
	for i := range n {
		d := make([]byte, BlockSize)
		fill(i, d)
		b.Add(uint64(1000+i*3), uint64(i+1), d)
		want = append(want, d)
	}
	return bytes.Clone(b.Finish2("vol", 0xABC, p)), want
}

func compressible(i int, d []byte) {
	for j := range d {
		d[j] = byte("the quick brown fox "[(i+j)%20])
	}
}

func random(i int, d []byte) {
	r := rand.New(rand.NewPCG(uint64(i), 1))
	for j := range d {
		d[j] = byte(r.Uint32())
	}
}

func TestV2RoundTrip(t *testing.T) {
	key := seal.NewKey()
	for _, p := range []Params{
		{}, {Compression: CompressZstd}, {Compression: CompressLZ4},
		{Sealed: true, KeyID: 9, Key: key},
		{Sealed: true, KeyID: 9, Key: key, ExtentBlocks: 1},
		{Compression: CompressZstd, ExtentBlocks: 5},
		{Sealed: true, KeyID: 9, Key: key, Compression: CompressZstd},
		{Sealed: true, KeyID: 9, Key: key, Compression: CompressLZ4},
	} {
		for _, fill := range []func(int, []byte){compressible, random} {
			for _, n := range []int{1, 17, 1024} {
				obj, want := buildV2(t, n, fill, p)
				var k *seal.Key
				if p.Sealed {
					k = &key
				}
				ix, data, err := Decode2(obj, k)
				if err != nil {
					t.Fatalf("%+v n=%d: %v", p.Compression, n, err)
				}
				for i, w := range want {
					if !bytes.Equal(data[i*BlockSize:(i+1)*BlockSize], w) || ix.Entries[i].Block != uint64(1000+i*3) || ix.Entries[i].Seq != uint64(i+1) {
						t.Fatalf("block %d differs", i)
					}
				}
				raw := Size(n)
				if n == 1024 {
					if fill == nil {
						continue
					}
					shrunk := int64(len(obj)) < raw/4
					if p.Compression != CompressNone && isCompressible(fill) && !shrunk {
						t.Errorf("compression %d: compressible chunk stored in %d bytes of %d", p.Compression, len(obj), raw)
					}
					for _, e := range ix.Extents {
						if !isCompressible(fill) && e.Compressed() {
							t.Errorf("random data stored compressed")
						}
					}
				}
			}
		}
	}
}

func isCompressible(f func(int, []byte)) bool {
	d := make([]byte, BlockSize)
	f(0, d)
	return d[0] == 't'
}

func TestV2Tamper(t *testing.T) {
	key := seal.NewKey()
	for _, p := range []Params{{Compression: CompressZstd}, {Sealed: true, KeyID: 9, Key: key}, {Sealed: true, KeyID: 9, Key: key, Compression: CompressLZ4}} {
		obj, _ := buildV2(t, 40, compressible, p)
		var k *seal.Key
		if p.Sealed {
			k = &key
		}
		h, _ := DecodeHeader(obj)
		dataStart := HeaderSize + IndexLen2(h.Count, h.ExtentBlocks)
		for _, at := range []int64{dataStart + 5, int64(len(obj)) - 1} {
			bad := bytes.Clone(obj)
			bad[at] ^= 0x10
			if _, _, err := Decode2(bad, k); !errors.Is(err, ErrCorrupt) {
				t.Errorf("flip at %d: %v", at, err)
			}
		}
		if p.Sealed {
			other := seal.NewKey()
			if _, _, err := Decode2(obj, &other); !errors.Is(err, ErrCorrupt) {
				t.Errorf("wrong key: %v", err)
			}
			// A tampered stored byte with its stored CRC recomputed still
			// fails authentication.
			bad := bytes.Clone(obj)
			ix, _ := DecodeIndex2(bad[HeaderSize:dataStart], h)
			e := ix.Extents[1]
			bad[e.Off+3] ^= 1
			fixCRC(bad, h, 1)
			if _, _, err := Decode2(bad, k); !errors.Is(err, ErrCorrupt) {
				t.Errorf("forged CRC: %v", err)
			}
		}
	}
}

// fixCRC recomputes extent k's stored CRC and the index and footer CRCs.
func fixCRC(b []byte, h Header, k int) {
	x := (h.Count + h.ExtentBlocks - 1) / h.ExtentBlocks
	ib := b[HeaderSize:]
	p := ib[h.Count*BlockEntry2+k*ExtentEntry2:]
	off := int64(leU64(p))
	l := int64(leU32(p[8:]))
	putU32(p[16:], crc(b[off:off+l]))
	il := h.Count*BlockEntry2 + x*ExtentEntry2
	f := ib[il:]
	putU32(f[12:], crc(ib[:il]))
	putU32(f[28:], crc(f[:28]))
}

func leU64(b []byte) uint64 {
	return uint64(leU32(b)) | uint64(leU32(b[4:]))<<32
}
func leU32(b []byte) uint32 {
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}
func putU32(b []byte, v uint32) {
	b[0], b[1], b[2], b[3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
}

func TestV2SwappedEntriesFail(t *testing.T) {
	key := seal.NewKey()
	obj, _ := buildV2(t, 16, random, Params{Sealed: true, KeyID: 1, Key: key})
	h, _ := DecodeHeader(obj)
	// Swap the block numbers of two entries, fixing every CRC: the
	// extent no longer authenticates.
	ib := obj[HeaderSize:]
	a, b := bytes.Clone(ib[0:8]), bytes.Clone(ib[16:24])
	copy(ib[0:8], b)
	copy(ib[16:24], a)
	fixCRC(obj, h, 0)
	if _, _, err := Decode2(obj, &key); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("swapped entries: %v", err)
	}
}

// FuzzDecode2: any bytes decode to an error or a verified chunk, never a
// panic nor an unbounded allocation.
func FuzzDecode2(f *testing.F) {
	var key seal.Key
	for _, p := range []Params{{Compression: CompressZstd}, {Compression: CompressLZ4}, {Sealed: true, KeyID: 1, Key: key, ExtentBlocks: 1}} {
		var b Builder
		b.Reset()
		for i := range 20 {
			d := make([]byte, BlockSize)
			compressible(i, d)
			b.Add(uint64(i), uint64(i+1), d)
		}
		f.Add(bytes.Clone(b.Finish2("v", 5, p)))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		ix, data, err := Decode2(b, &key)
		if err == nil && len(data) != ix.Header.Count*BlockSize {
			t.Fatalf("decoded %d bytes for %d blocks", len(data), ix.Header.Count)
		}
	})
}

// BenchmarkOpenExtent measures the decoding of one extent as a read does
// it (the opener made once per chunk): a sealed 4 KiB block against the
// bare AES-GCM open of the same bytes, which is the floor; and a plain
// one (CRCs only) for comparison.
func BenchmarkOpenExtent(b *testing.B) {
	key := seal.NewKey()
	for _, tc := range []struct {
		name string
		p    Params
	}{
		{"plain", Params{ExtentBlocks: 1, Compression: CompressZstd}},
		{"sealed", Params{Sealed: true, KeyID: 9, Key: key, ExtentBlocks: 1}},
		{"sealed-zstd", Params{Sealed: true, KeyID: 9, Key: key, Compression: CompressZstd}},
	} {
		obj, _ := buildV2(b, 64, random, tc.p)
		if tc.p.Compression == CompressZstd && !tc.p.Sealed {
			obj, _ = buildV2(b, 64, random, Params{Compression: CompressZstd, ExtentBlocks: 1})
		}
		h, err := DecodeHeader(obj)
		if err != nil {
			b.Fatal(err)
		}
		ix, err := DecodeIndex2(obj[HeaderSize:HeaderSize+IndexLen2(h.Count, h.ExtentBlocks)], h)
		if err != nil {
			b.Fatal(err)
		}
		var k *seal.Key
		if tc.p.Sealed {
			k = &key
		}
		op, err := NewOpener(ix, k)
		if err != nil {
			b.Fatal(err)
		}
		dst := make([]byte, ix.Header.ExtentBlocks*BlockSize)
		b.Run(tc.name, func(b *testing.B) {
			b.SetBytes(int64(len(dst)))
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				k := i % len(ix.Extents)
				ee := ix.Extents[k]
				if _, err := op.Extent(k, obj[ee.Off:ee.Off+int64(ee.Len)], dst); err != nil {
					b.Fatal(err)
				}
			}
		})
		if tc.name == "sealed" {
			aad := extentAAD(aadPrefix(ix.Header.Volume, ix.Header.ID), 0, 0, ix.Entries[:1])
			n := seal.Nonce(1, 0)
			ee := ix.Extents[0]
			b.Run("bare-gcm-open", func(b *testing.B) {
				b.SetBytes(BlockSize)
				b.ReportAllocs()
				for i := 0; i < b.N; i++ {
					if _, err := op.aead.Open(dst[:0], n[:], obj[ee.Off:ee.Off+int64(ee.Len)], aad); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
