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
