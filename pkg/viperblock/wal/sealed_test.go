package wal

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/seal"
)

// Sealed records frame like plain ones (a segment reads them back in
// order, with their epoch and key), open only with their own key, and fail
// authentication when a byte changes, even with the CRC fixed up.
func TestSealedRecords(t *testing.T) {
	key := seal.Subkey(seal.NewKey(), nil, "wal test", []byte{1})
	other := seal.Subkey(seal.NewKey(), nil, "wal test", []byte{1})
	h := SegmentHeader{Shard: 3, Epoch: 7, Generation: 1, Salt: 0x1234567, Volume: "v"}
	data := bytes.Repeat([]byte("secret!!"), BlockSize/8)
	body := make([]byte, SealedBlockLen+SealedTrimLen+100)
	PutSealedBlock(body, h.Salt, 10, 3, 7, 99, key, data)
	PutSealedTrim(body[SealedBlockLen:], h.Salt, 11, 0, 16, 7, 99, key)
	if bytes.Contains(body, data[:64]) {
		t.Fatal("plaintext in a sealed record")
	}
	s := NewSegment(h, body)
	r, n, err := s.Next()
	if err != nil || n != SealedBlockLen || !r.IsBlock() || !r.Sealed() || r.Seq != 10 || r.Block != 3 || r.Epoch != 7 || r.KeyID != 99 {
		t.Fatalf("block record %+v, %d, %v", r, n, err)
	}
	got, err := Open(r, key, make([]byte, BlockSize))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("open: %v", err)
	}
	if _, err := Open(r, other, make([]byte, BlockSize)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("open with another key: %v", err)
	}
	tr, n, err := s.Next()
	if err != nil || n != SealedTrimLen || tr.IsBlock() || tr.Count != 16 {
		t.Fatalf("trim record %+v, %d, %v", tr, n, err)
	}
	if _, err := Open(tr, key, nil); err != nil {
		t.Fatalf("open trim: %v", err)
	}
	if _, _, err := s.Next(); err != io.EOF {
		t.Fatalf("end: %v", err)
	}
	// Change the block number, fix the CRC: the tag no longer matches.
	body[16] ^= 1
	rec := body[:SealedBlockLen]
	c := CRC(append(append([]byte(nil), rec[:28]...), rec[32:]...))
	rec[28], rec[29], rec[30], rec[31] = byte(c), byte(c>>8), byte(c>>16), byte(c>>24)
	r, _, err = NewSegment(h, body).Next()
	if err != nil {
		t.Fatalf("CRC fixed up: %v", err)
	}
	if _, err := Open(r, key, make([]byte, BlockSize)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("moved record: %v", err)
	}
}

// An unsealed record seals into exactly the record PutSealedBlock (or
// PutSealedTrim) encodes, in place or into another buffer, every time
// (deterministic: writing a record twice reuses no nonce on another
// plaintext); its block reads as Data before; and a reader rejects it on
// disk, so it can never be served from there.
func TestUnsealedRecords(t *testing.T) {
	key := seal.Subkey(seal.NewKey(), nil, "wal test", []byte{2})
	data := bytes.Repeat([]byte("in clear"), BlockSize/8)
	const salt = 0x2345678
	want := make([]byte, SealedBlockLen+SealedTrimLen)
	PutSealedBlock(want, salt, 20, 5, 3, 77, key, data)
	PutSealedTrim(want[SealedBlockLen:], salt, 21, 8, 4, 3, 77, key)

	un := make([]byte, SealedBlockLen+SealedTrimLen)
	PutUnsealedBlock(un, salt, 20, 5, 3, 77, data)
	PutUnsealedTrim(un[SealedBlockLen:], salt, 21, 8, 4, 3, 77)
	r := ParseTrusted(un)
	if !r.Unsealed() || r.Sealed() || !r.IsBlock() || r.Seq != 20 || r.Block != 5 || r.Epoch != 3 || r.KeyID != 77 || !bytes.Equal(r.Data, data) {
		t.Fatalf("unsealed block %+v", r)
	}
	if tr := ParseTrusted(un[SealedBlockLen:]); !tr.Unsealed() || tr.IsBlock() || tr.Count != 4 || len(tr.Raw) != SealedTrimLen {
		t.Fatalf("unsealed trim %+v", tr)
	}
	// A reader rejects both where a segment or a record stream holds them.
	if _, _, err := DecodeAny(un); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("unsealed block decoded: %v", err)
	}
	if _, _, err := DecodeAny(un[SealedBlockLen:]); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("unsealed trim decoded: %v", err)
	}
	if _, _, err := NewSegment(SegmentHeader{Version: Version, Salt: salt}, un).Next(); !errors.Is(err, ErrTornTail) {
		t.Fatalf("segment of unsealed records: %v, want a torn tail", err)
	}

	orig := bytes.Clone(un)
	var out []byte
	for range 2 {
		for off := 0; off < len(un); {
			var n int
			out, n = Seal(out, un[off:], key)
			off += n
		}
	}
	if !bytes.Equal(un, orig) {
		t.Fatal("Seal changed its source")
	}
	if !bytes.Equal(out[:len(want)], want) || !bytes.Equal(out[len(want):], want) {
		t.Fatal("sealed records differ from PutSealedBlock's and PutSealedTrim's")
	}
	// In place.
	for off := 0; off < len(un); {
		_, n := Seal(un[off:off], un[off:], key)
		off += n
	}
	if !bytes.Equal(un, want) {
		t.Fatal("records sealed in place differ")
	}
	s := NewSegment(SegmentHeader{Version: Version, Salt: salt}, un)
	r, _, err := s.Next()
	if err != nil {
		t.Fatal(err)
	}
	if got, err := Open(r, key, make([]byte, BlockSize)); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("open: %v", err)
	}
}
