package viperblock

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/wal"
)

// FuzzDecodeLease: the lease decoder never panics, and what it accepts
// encodes back to the same bytes.
func FuzzDecodeLease(f *testing.F) {
	f.Add(leaseRecord{epoch: 3, nonce: [16]byte{1, 2}, duration: 15 * time.Second, counter: 7}.encode())
	f.Add(leaseRecord{released: true, duration: time.Second, counter: 1}.encode())
	f.Add(encodeRelease([16]byte{9}, time.Unix(1, 0)))
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := decodeLease(b)
		if err != nil {
			return
		}
		if !bytes.Equal(l.encode(), b) {
			t.Fatalf("lease %+v re-encodes differently", l)
		}
		_, _ = decodeRelease(b)
	})
}

// FuzzDecodeStoreLog: the store-log decoder never panics, and the records
// it accepts encode back to exactly the object's record bytes.
func FuzzDecodeStoreLog(f *testing.F) {
	rec := make([]byte, wal.BlockRecordLen)
	wal.PutBlock(rec, 0x1234, 5, 9, bytes.Repeat([]byte{7}, wal.BlockSize))
	trim := make([]byte, wal.HeaderSize)
	wal.PutTrim(trim, 0x5678, 6, 0, 4)
	f.Add(encodeStoreLog(2, 1, 5, 6, append(append([]byte(nil), rec...), trim...)))
	// A version 1 object (version 1 records).
	old := encodeStoreLog(2, 1, 5, 6, nil)
	wal.PutBlockV1(rec, 5, 9, bytes.Repeat([]byte{7}, wal.BlockSize))
	old = append(old[:storeLogHeader], rec...)
	binary.LittleEndian.PutUint16(old[8:], 1)
	binary.LittleEndian.PutUint32(old[12:], uint32(len(rec)))
	f.Add(binary.LittleEndian.AppendUint32(old, wal.CRC(old)))
	f.Add(encodeStoreLog(1, 1, 0, 0, nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, recs, err := decodeStoreLog(b)
		if err != nil {
			return
		}
		var again []byte
		for _, r := range recs {
			again = append(again, encodeRecord(r)...)
		}
		if !bytes.Equal(again, b[storeLogHeader:len(b)-4]) {
			t.Fatal("accepted records re-encode differently")
		}
	})
}
