// Package wal defines the write-ahead log's on-disk format: segment files made
// of a header and a stream of records. The engine keeps 16 shards, each a
// directory of segment files; a block's records always go to shard
// (block & 0xF). Within a segment, records appear in increasing sequence
// order. All integers are little-endian. CRCs are CRC32C (Castagnoli).
//
// # Segment header (version 1)
//
//	offset  size  field
//	0       8     magic "VBWALSEG"
//	8       2     format version (1)
//	10      2     shard number (0-15)
//	12      2     length n of the volume name
//	14      2     reserved, zero
//	16      8     owner epoch of the writer that created the segment
//	24      8     generation (segment number, increasing per volume)
//	32      n     volume name
//	32+n    4     CRC32C of bytes [0, 32+n)
//
// # Record
//
//	offset  size  field
//	0       4     magic "VBWR"
//	4       1     type: 1 = block write, 2 = trim (blocks read as zeros)
//	5       3     reserved, zero
//	8       8     sequence number (unique per volume, increasing)
//	16      8     block number (write: the block; trim: the first block)
//	24      4     type 1: payload length (always 4096); type 2: block count
//	28      4     CRC32C of bytes [0, 28) followed by the payload
//	32      ...   payload: type 1: the block's 4096 bytes; type 2: none
//
// # Reading
//
// A segment ends cleanly at a record boundary (io.EOF). A record that runs
// past the end of the file, a zero-filled remainder, or a bad record that is
// the last thing in the file is a torn tail (ErrTornTail): a write that was
// never acknowledged as durable, which recovery discards. A bad record
// followed by more data is corruption (ErrCorrupt), never served as data.
package wal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// Format constants. They are part of the on-disk format.
const (
	Version        = 1
	SegmentMagic   = "VBWALSEG"
	RecordMagic    = "VBWR"
	HeaderSize     = 32   // record header bytes
	BlockSize      = 4096 // payload of a block record
	BlockRecordLen = HeaderSize + BlockSize
	TypeBlock      = 1
	TypeTrim       = 2
	segFixed       = 32
	MaxNameLen     = 1024
)

// Errors.
var (
	ErrTornTail = errors.New("viperblock/wal: torn tail (incomplete final record)")
	ErrCorrupt  = errors.New("viperblock/wal: corrupt record")
	ErrVersion  = errors.New("viperblock/wal: unsupported segment version")
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// CRC returns the CRC32C of b.
func CRC(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// SegmentHeader describes a segment file.
type SegmentHeader struct {
	Shard      uint16
	Epoch      uint64
	Generation uint64
	Volume     string
}

// AppendSegmentHeader appends h's encoding to dst.
func AppendSegmentHeader(dst []byte, h SegmentHeader) []byte {
	start := len(dst)
	dst = append(dst, SegmentMagic...)
	dst = binary.LittleEndian.AppendUint16(dst, Version)
	dst = binary.LittleEndian.AppendUint16(dst, h.Shard)
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(h.Volume)))
	dst = binary.LittleEndian.AppendUint16(dst, 0)
	dst = binary.LittleEndian.AppendUint64(dst, h.Epoch)
	dst = binary.LittleEndian.AppendUint64(dst, h.Generation)
	dst = append(dst, h.Volume...)
	return binary.LittleEndian.AppendUint32(dst, CRC(dst[start:]))
}

// DecodeSegmentHeader decodes the header at the start of b and returns it
// with its encoded length.
func DecodeSegmentHeader(b []byte) (SegmentHeader, int, error) {
	var h SegmentHeader
	if len(b) < segFixed+4 {
		return h, 0, fmt.Errorf("%w: segment header truncated (%d bytes)", ErrTornTail, len(b))
	}
	if string(b[:8]) != SegmentMagic {
		return h, 0, fmt.Errorf("%w: bad segment magic %q", ErrCorrupt, b[:8])
	}
	if v := binary.LittleEndian.Uint16(b[8:]); v != Version {
		return h, 0, fmt.Errorf("%w: %d (this build reads %d)", ErrVersion, v, Version)
	}
	n := int(binary.LittleEndian.Uint16(b[12:]))
	if n > MaxNameLen {
		return h, 0, fmt.Errorf("%w: segment name length %d", ErrCorrupt, n)
	}
	end := segFixed + n
	if len(b) < end+4 {
		return h, 0, fmt.Errorf("%w: segment header truncated", ErrTornTail)
	}
	if got, want := binary.LittleEndian.Uint32(b[end:]), CRC(b[:end]); got != want {
		return h, 0, fmt.Errorf("%w: segment header CRC %08x, want %08x", ErrCorrupt, got, want)
	}
	h.Shard = binary.LittleEndian.Uint16(b[10:])
	h.Epoch = binary.LittleEndian.Uint64(b[16:])
	h.Generation = binary.LittleEndian.Uint64(b[24:])
	h.Volume = string(b[segFixed:end])
	return h, end + 4, nil
}

// Record is one decoded record. For block records Data aliases the buffer
// that was decoded.
type Record struct {
	Type  uint8
	Seq   uint64
	Block uint64
	Count uint32 // trim: number of blocks; block write: 1
	Data  []byte
}

func putHeader(dst []byte, typ uint8, seq, block uint64, n uint32) {
	copy(dst[0:4], RecordMagic)
	dst[4], dst[5], dst[6], dst[7] = typ, 0, 0, 0
	binary.LittleEndian.PutUint64(dst[8:], seq)
	binary.LittleEndian.PutUint64(dst[16:], block)
	binary.LittleEndian.PutUint32(dst[24:], n)
}

// PutBlock encodes a block-write record into dst, which must be at least
// BlockRecordLen bytes long. data must be exactly BlockSize bytes.
func PutBlock(dst []byte, seq, block uint64, data []byte) {
	_ = dst[BlockRecordLen-1]
	putHeader(dst, TypeBlock, seq, block, BlockSize)
	copy(dst[HeaderSize:BlockRecordLen], data)
	c := crc32.Update(CRC(dst[:28]), castagnoli, dst[HeaderSize:BlockRecordLen])
	binary.LittleEndian.PutUint32(dst[28:], c)
}

// PutTrim encodes a trim record into dst (at least HeaderSize bytes).
func PutTrim(dst []byte, seq, block uint64, count uint32) {
	_ = dst[HeaderSize-1]
	putHeader(dst, TypeTrim, seq, block, count)
	binary.LittleEndian.PutUint32(dst[28:], CRC(dst[:28]))
}

// RecordLen returns the encoded length of a record of type typ.
func RecordLen(typ uint8) int {
	if typ == TypeBlock {
		return BlockRecordLen
	}
	return HeaderSize
}

// ParseTrusted decodes the record at the start of b without verifying it.
// It is for records this process wrote itself.
func ParseTrusted(b []byte) Record {
	r := Record{
		Type:  b[4],
		Seq:   binary.LittleEndian.Uint64(b[8:]),
		Block: binary.LittleEndian.Uint64(b[16:]),
	}
	if r.Type == TypeBlock {
		r.Count = 1
		r.Data = b[HeaderSize:BlockRecordLen]
	} else {
		r.Count = binary.LittleEndian.Uint32(b[24:])
	}
	return r
}

// Decode decodes and verifies the record at the start of b, returning it and
// its encoded length. At the end of b it returns io.EOF; for a torn tail
// ErrTornTail; for anything else that is wrong ErrCorrupt.
func Decode(b []byte) (Record, int, error) {
	if len(b) == 0 {
		return Record{}, 0, io.EOF
	}
	if len(b) < HeaderSize {
		return Record{}, 0, tornOrCorrupt(b, len(b), "record header truncated")
	}
	if string(b[:4]) != RecordMagic {
		return Record{}, 0, tornOrCorrupt(b, HeaderSize, fmt.Sprintf("bad record magic %q", b[:4]))
	}
	typ := b[4]
	var n int
	switch typ {
	case TypeBlock:
		if l := binary.LittleEndian.Uint32(b[24:]); l != BlockSize {
			return Record{}, 0, tornOrCorrupt(b, HeaderSize, fmt.Sprintf("block record length %d", l))
		}
		n = BlockRecordLen
	case TypeTrim:
		n = HeaderSize
	default:
		return Record{}, 0, tornOrCorrupt(b, HeaderSize, fmt.Sprintf("unknown record type %d", typ))
	}
	if len(b) < n {
		return Record{}, 0, fmt.Errorf("%w: record needs %d bytes, %d remain", ErrTornTail, n, len(b))
	}
	c := crc32.Update(CRC(b[:28]), castagnoli, b[HeaderSize:n])
	if got := binary.LittleEndian.Uint32(b[28:]); got != c {
		return Record{}, 0, tornOrCorrupt(b, n, fmt.Sprintf("record CRC %08x, want %08x", got, c))
	}
	r := ParseTrusted(b[:n])
	if r.Type == TypeTrim && r.Count == 0 {
		return Record{}, 0, fmt.Errorf("%w: trim of zero blocks", ErrCorrupt)
	}
	return r, n, nil
}

// tornOrCorrupt classifies a bad record that spans b[:n]: it is a torn tail
// if nothing but zeros follows it, corruption otherwise.
func tornOrCorrupt(b []byte, n int, what string) error {
	if allZero(b[n:]) {
		return fmt.Errorf("%w: %s", ErrTornTail, what)
	}
	return fmt.Errorf("%w: %s, with %d bytes after it", ErrCorrupt, what, len(b)-n)
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
