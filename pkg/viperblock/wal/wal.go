// Package wal defines the write-ahead log's on-disk format: segment files made
// of a header and a stream of records. The engine keeps 16 shards, each a
// directory of segment files; a block's records always go to shard
// (block & 0xF). Within a segment, records appear in strictly increasing
// sequence order. All integers are little-endian. CRCs are CRC32C
// (Castagnoli).
//
// Two versions exist. Version 2 is written; both are read.
//
// # Segment header (version 2)
//
//	offset  size  field
//	0       8     magic "VBWALSEG"
//	8       2     format version (2)
//	10      2     shard number (0-15)
//	12      2     length n of the volume name
//	14      2     reserved, zero
//	16      8     owner epoch of the writer that created the segment
//	24      8     generation (segment number, increasing per volume)
//	32      4     salt: random per segment, never 0 and never "VBWR"
//	36      4     creation time, Unix seconds (informational: the age of
//	              the oldest data, since a recycled file's own dates are
//	              those of its first life)
//	40      n     volume name
//	40+n    4     CRC32C of bytes [0, 40+n)
//
// # Record (version 2)
//
//	offset  size  field
//	0       4     the segment's salt (as in its header)
//	4       1     type: 1 = block write, 2 = trim (blocks read as zeros),
//	              3 = sealed block write, 4 = sealed trim
//	5       3     reserved, zero
//	8       8     sequence number (unique per volume, increasing)
//	16      8     block number (write: the block; trim: the first block)
//	24      4     types 1 and 3: payload length (4096, 4128); types 2 and
//	              4: block count
//	28      4     CRC32C of bytes [0, 28) followed by the payload
//	32      ...   payload: type 1: the block's 4096 bytes; type 2: none;
//	              types 3 and 4: a sealed payload
//
// # Sealed records (encrypted volumes)
//
// An encrypted volume writes types 3 and 4 only, so no block data reaches
// the disk in the clear. Their payload:
//
//	offset  size  field
//	32      8     owner epoch of the writer
//	40      8     id of the data key (in the manifest's key table)
//	48      ...   type 3: the block's 4096 bytes sealed (ciphertext), then
//	              the 16-byte GCM tag; type 4: the 16-byte tag alone
//
// A type 3 record is 4160 bytes, a type 4 record 64. The seal is
// AES-256-GCM under the writer's WAL key, HKDF-SHA256(data key, no salt,
// "viperblock wal v2" 0x00 volume name 0x00 epoch (8 bytes)); the nonce is
// the type (4 bytes) then the sequence number (8 bytes); the additional
// data is bytes [4, 28) then [32, 48) of the record (type, reserved
// bytes, sequence number, block number, length or count, epoch, key id:
// everything but the salt and the CRC). An owner's epoch
// is never reused and it never gives one sequence number to two records,
// so nonces never repeat under a key; and a record authenticates only at
// its own block and sequence number, so records cannot be moved, swapped or
// replayed under another sequence number. The CRC still frames the record
// (torn writes, stale records) as for plain records; a record whose CRC is
// right but whose tag is not is corruption, reported by the engine, which
// holds the keys. The salt is left out of the additional data: it frames
// records in a segment file and nothing more.
//
// # Unsealed records (in memory only, never written)
//
// An encrypted volume's writer keeps the records it appends unsealed in
// memory and seals each one only when it writes it out, to a segment file
// or to the store log: most records are committed by a drain before
// anything asks for them to be durable, and are never written at all. An
// unsealed record has the layout of its sealed counterpart (types 3 and
// 4), except:
//
//	offset  size  field
//	4       1     type: 0x83 = unsealed block write, 0x84 = unsealed trim
//	28      4     zero (no CRC)
//	48      ...   type 0x83: the block's 4096 bytes in the clear, then 16
//	              zero bytes; type 0x84: 16 zero bytes
//
// Seal turns one into the record PutSealedBlock or PutSealedTrim would
// have encoded. Sealing is deterministic (the key is the writer's, the
// nonce the type and sequence number): a record sealed twice (written to
// a segment file and to the store log, or written again after a failed
// write) gives the same bytes both times, so a nonce never seals two
// different plaintexts. Readers take these types for unknown ones: an
// unsealed record found on disk is never served as data.
//
// A version 2 segment file may be longer than its records: the writer
// extends files ahead of its writes (preallocation, zero filled) and
// recycles the files of retired segments, whose old records stay behind
// the new ones. The salt tells them apart: the header of a recycled file
// is rewritten with a fresh salt, different from the file's previous one,
// and made durable before any record is written after it.
//
// # Reading a version 2 segment
//
// A record position holds a live record when its salt is the segment's,
// its type and length are valid, its CRC matches and its sequence number
// is above the previous live record's (zero for the first). The log is the
// run of live records from the header on; it ends at the first position
// that does not hold one. What follows is classified by scanning the rest
// of the file for a live record, that is one with the segment's salt, a
// valid CRC and a sequence number above the last live one, at any byte
// offset:
//
//   - if one exists, the bad position is corruption (ErrCorrupt), never
//     served as data: a record that was once durable may be behind it;
//   - otherwise, if the bad position carries the segment's salt but not a
//     whole valid record (a record of this segment's own life that was
//     torn, or runs past the end of the file), it is a torn tail (ErrTornTail): a write never acknowledged as
//     durable, which recovery discards;
//   - otherwise (zeros, a record of the file's previous life, or the end
//     of the file) the log ends cleanly (io.EOF).
//
// A stale record whose salt happens to equal the new one still ends the
// log, as its sequence number is below every record of the new life.
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
// # Record (version 1)
//
// As version 2, with the magic "VBWR" at offset 0 in place of the salt.
//
// # Reading a version 1 segment
//
// A segment ends cleanly at a record boundary (io.EOF). A record that runs
// past the end of the file, a zero-filled remainder, or a bad record that is
// the last thing in the file is a torn tail (ErrTornTail): a write that was
// never acknowledged as durable, which recovery discards. A bad record
// followed by more data is corruption (ErrCorrupt), never served as data.
//
// # Header of a segment never written
//
// A header shorter than its fixed part, or whose first 8 bytes are zero (a
// preallocated file whose header never reached the disk), is a torn
// header (ErrTornTail): nothing in the segment was ever flushed.
package wal

import (
	"bytes"
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/seal"
)

// Format constants. They are part of the on-disk format.
const (
	Version         = 2 // the version written
	Version1        = 1 // the version before salts; still read
	SegmentMagic    = "VBWALSEG"
	RecordMagic     = "VBWR" // version 1 records
	HeaderSize      = 32     // record header bytes
	BlockSize       = 4096   // payload of a block record
	BlockRecordLen  = HeaderSize + BlockSize
	TypeBlock       = 1
	TypeTrim        = 2
	TypeSealedBlock = 3
	TypeSealedTrim  = 4
	// In memory only (see "Unsealed records").
	TypeUnsealedBlock = 0x80 | TypeSealedBlock
	TypeUnsealedTrim  = 0x80 | TypeSealedTrim
	SealedPrefix      = 16 // epoch and key id
	SealedBlockLen    = HeaderSize + SealedPrefix + BlockSize + tagSize
	SealedTrimLen     = HeaderSize + SealedPrefix + tagSize
	tagSize           = 16
	segFixedV1        = 32
	segFixedV2        = 40
	MaxNameLen        = 1024
)

// recordMagic is RecordMagic as a salt value: no version 2 segment uses it,
// so a record's first four bytes say which version encoded it.
var recordMagic = binary.LittleEndian.Uint32([]byte(RecordMagic))

// ValidSalt reports whether s may be a version 2 segment's salt: not zero
// (zero fill never looks like a record) and not RecordMagic.
func ValidSalt(s uint32) bool { return s != 0 && s != recordMagic }

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
	Version    uint16 // 1 or 2; AppendSegmentHeader writes 2 whatever it says
	Shard      uint16
	Epoch      uint64
	Generation uint64
	Salt       uint32 // version 2: every record's first four bytes
	Created    uint32 // version 2: creation time, Unix seconds
	Volume     string
}

// AppendSegmentHeader appends the version 2 encoding of h to dst. h.Salt
// must be valid (ValidSalt).
func AppendSegmentHeader(dst []byte, h SegmentHeader) []byte {
	start := len(dst)
	dst = append(dst, SegmentMagic...)
	dst = binary.LittleEndian.AppendUint16(dst, Version)
	dst = binary.LittleEndian.AppendUint16(dst, h.Shard)
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(h.Volume)))
	dst = binary.LittleEndian.AppendUint16(dst, 0)
	dst = binary.LittleEndian.AppendUint64(dst, h.Epoch)
	dst = binary.LittleEndian.AppendUint64(dst, h.Generation)
	dst = binary.LittleEndian.AppendUint32(dst, h.Salt)
	dst = binary.LittleEndian.AppendUint32(dst, h.Created)
	dst = append(dst, h.Volume...)
	return binary.LittleEndian.AppendUint32(dst, CRC(dst[start:]))
}

// AppendSegmentHeaderV1 appends the version 1 encoding of h to dst. The
// engine no longer writes version 1; tests and tools use it to make logs
// of the old format.
func AppendSegmentHeaderV1(dst []byte, h SegmentHeader) []byte {
	start := len(dst)
	dst = append(dst, SegmentMagic...)
	dst = binary.LittleEndian.AppendUint16(dst, Version1)
	dst = binary.LittleEndian.AppendUint16(dst, h.Shard)
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(h.Volume)))
	dst = binary.LittleEndian.AppendUint16(dst, 0)
	dst = binary.LittleEndian.AppendUint64(dst, h.Epoch)
	dst = binary.LittleEndian.AppendUint64(dst, h.Generation)
	dst = append(dst, h.Volume...)
	return binary.LittleEndian.AppendUint32(dst, CRC(dst[start:]))
}

// DecodeSegmentHeader decodes the header (version 1 or 2) at the start of
// b and returns it with its encoded length.
func DecodeSegmentHeader(b []byte) (SegmentHeader, int, error) {
	var h SegmentHeader
	if len(b) < segFixedV1+4 || allZero(b[:8]) {
		return h, 0, fmt.Errorf("%w: segment header truncated or never written (%d bytes)", ErrTornTail, len(b))
	}
	if string(b[:8]) != SegmentMagic {
		return h, 0, fmt.Errorf("%w: bad segment magic %q", ErrCorrupt, b[:8])
	}
	fixed := segFixedV2
	switch v := binary.LittleEndian.Uint16(b[8:]); v {
	case Version1:
		fixed = segFixedV1
	case Version:
	default:
		return h, 0, fmt.Errorf("%w: %d (this build reads %d and %d)", ErrVersion, v, Version1, Version)
	}
	n := int(binary.LittleEndian.Uint16(b[12:]))
	if n > MaxNameLen {
		return h, 0, fmt.Errorf("%w: segment name length %d", ErrCorrupt, n)
	}
	end := fixed + n
	if len(b) < end+4 {
		return h, 0, fmt.Errorf("%w: segment header truncated", ErrTornTail)
	}
	if got, want := binary.LittleEndian.Uint32(b[end:]), CRC(b[:end]); got != want {
		return h, 0, fmt.Errorf("%w: segment header CRC %08x, want %08x", ErrCorrupt, got, want)
	}
	h.Version = binary.LittleEndian.Uint16(b[8:])
	h.Shard = binary.LittleEndian.Uint16(b[10:])
	h.Epoch = binary.LittleEndian.Uint64(b[16:])
	h.Generation = binary.LittleEndian.Uint64(b[24:])
	if h.Version == Version {
		h.Salt = binary.LittleEndian.Uint32(b[32:])
		h.Created = binary.LittleEndian.Uint32(b[36:])
		if !ValidSalt(h.Salt) {
			return h, 0, fmt.Errorf("%w: segment salt %08x", ErrCorrupt, h.Salt)
		}
	}
	h.Volume = string(b[fixed:end])
	return h, end + 4, nil
}

// Record is one decoded record. For block records Data aliases the buffer
// that was decoded.
type Record struct {
	Salt  uint32 // version 2: the segment's salt; version 1: RecordMagic's bytes
	Type  uint8
	Seq   uint64
	Block uint64
	Count uint32 // trim: number of blocks; block write: 1
	Data  []byte // types 1 and 0x83: the block; type 3: its ciphertext and tag
	// Sealed records: the writer's epoch and data key.
	Epoch, KeyID uint64
	// Raw is the whole encoded record (aliasing the decoded buffer).
	Raw []byte
}

// IsBlock reports whether r writes a block (sealed or not).
func (r Record) IsBlock() bool {
	return r.Type == TypeBlock || r.Type == TypeSealedBlock || r.Type == TypeUnsealedBlock
}

// Sealed reports whether r is sealed.
func (r Record) Sealed() bool { return r.Type == TypeSealedBlock || r.Type == TypeSealedTrim }

// Unsealed reports whether r is an unsealed record (in memory only: see
// "Unsealed records"). An unsealed block's Data is its block.
func (r Record) Unsealed() bool { return IsUnsealed(r.Type) }

// IsUnsealed reports whether typ is the type of an unsealed record.
func IsUnsealed(typ uint8) bool { return typ == TypeUnsealedBlock || typ == TypeUnsealedTrim }

func sealNonce(typ uint8, seq uint64) [seal.NonceSize]byte { return seal.Nonce(uint32(typ), seq) }

// sealAAD is a sealed record's additional data: bytes [4, 28) and
// [32, 48) of the record.
func sealAAD(rec []byte) [40]byte {
	var a [40]byte
	copy(a[:24], rec[4:28])
	copy(a[24:], rec[32:48])
	return a
}

// PutSealedBlock encodes a sealed block-write record (type 3) into dst
// (at least SealedBlockLen bytes), sealing data (BlockSize bytes) with
// aead, the WAL key of (keyID, epoch).
func PutSealedBlock(dst []byte, salt uint32, seq, block, epoch, keyID uint64, aead cipher.AEAD, data []byte) {
	_ = dst[SealedBlockLen-1]
	putHeader(dst, salt, TypeSealedBlock, seq, block, SealedPrefix+BlockSize+tagSize)
	binary.LittleEndian.PutUint64(dst[32:], epoch)
	binary.LittleEndian.PutUint64(dst[40:], keyID)
	n := sealNonce(TypeSealedBlock, seq)
	aad := sealAAD(dst)
	aead.Seal(dst[48:48], n[:], data, aad[:])
	c := crc32.Update(CRC(dst[:28]), castagnoli, dst[HeaderSize:SealedBlockLen])
	binary.LittleEndian.PutUint32(dst[28:], c)
}

// PutSealedTrim encodes a sealed trim record (type 4) into dst (at least
// SealedTrimLen bytes).
func PutSealedTrim(dst []byte, salt uint32, seq, block uint64, count uint32, epoch, keyID uint64, aead cipher.AEAD) {
	_ = dst[SealedTrimLen-1]
	putHeader(dst, salt, TypeSealedTrim, seq, block, count)
	binary.LittleEndian.PutUint64(dst[32:], epoch)
	binary.LittleEndian.PutUint64(dst[40:], keyID)
	n := sealNonce(TypeSealedTrim, seq)
	aad := sealAAD(dst)
	aead.Seal(dst[48:48], n[:], nil, aad[:])
	c := crc32.Update(CRC(dst[:28]), castagnoli, dst[HeaderSize:SealedTrimLen])
	binary.LittleEndian.PutUint32(dst[28:], c)
}

// PutUnsealedBlock encodes an unsealed block-write record (type 0x83, see
// "Unsealed records") into dst (at least SealedBlockLen bytes): the record
// Seal turns into the one PutSealedBlock encodes.
func PutUnsealedBlock(dst []byte, salt uint32, seq, block, epoch, keyID uint64, data []byte) {
	_ = dst[SealedBlockLen-1]
	putHeader(dst, salt, TypeUnsealedBlock, seq, block, SealedPrefix+BlockSize+tagSize)
	binary.LittleEndian.PutUint32(dst[28:], 0)
	binary.LittleEndian.PutUint64(dst[32:], epoch)
	binary.LittleEndian.PutUint64(dst[40:], keyID)
	copy(dst[48:48+BlockSize], data)
	clear(dst[48+BlockSize : SealedBlockLen])
}

// PutUnsealedTrim encodes an unsealed trim record (type 0x84) into dst (at
// least SealedTrimLen bytes).
func PutUnsealedTrim(dst []byte, salt uint32, seq, block uint64, count uint32, epoch, keyID uint64) {
	_ = dst[SealedTrimLen-1]
	putHeader(dst, salt, TypeUnsealedTrim, seq, block, count)
	binary.LittleEndian.PutUint32(dst[28:], 0)
	binary.LittleEndian.PutUint64(dst[32:], epoch)
	binary.LittleEndian.PutUint64(dst[40:], keyID)
	clear(dst[48:SealedTrimLen])
}

// Seal appends to dst the sealed record (type 3 or 4) of the unsealed
// record at the start of src, sealed with aead (the WAL key of the key id
// and epoch the record names), and returns the extended slice and the
// length of the record read from src. dst may be src[:0], to seal the
// record in place; otherwise src is not modified. It panics if src does
// not start with an unsealed record.
func Seal(dst, src []byte, aead cipher.AEAD) ([]byte, int) {
	typ := src[4]
	if !IsUnsealed(typ) {
		panic(fmt.Sprintf("viperblock/wal: Seal of a record of type %d", typ))
	}
	n := RecordLen(typ)
	_ = src[n-1]
	start := len(dst)
	dst = append(dst, src[:48]...)
	rec := dst[start:]
	rec[4], rec[5], rec[6], rec[7] = typ&^0x80, 0, 0, 0
	// Nothing allocated: the nonce, the type (4 bytes) then the sequence
	// number, is bytes [4, 16) of the record; the additional data, bytes
	// [4, 28) and [32, 48), is made contiguous by moving [32, 48) down
	// over the CRC's place while the record is sealed, then back.
	copy(rec[28:44], rec[32:48])
	dst = aead.Seal(dst, rec[4:16], src[48:n-tagSize], rec[4:44])
	rec = dst[start:]
	copy(rec[32:48], rec[28:44])
	c := crc32.Update(CRC(rec[:28]), castagnoli, rec[HeaderSize:n])
	binary.LittleEndian.PutUint32(rec[28:], c)
	return dst, n
}

// Open authenticates a sealed record with aead (the WAL key of its
// r.KeyID and r.Epoch); a sealed block's data is decrypted into dst (at
// least BlockSize bytes), which it returns. A record that fails is
// reported as ErrCorrupt.
func Open(r Record, aead cipher.AEAD, dst []byte) ([]byte, error) {
	if !r.Sealed() || len(r.Raw) < SealedTrimLen {
		return nil, fmt.Errorf("%w: not a sealed record", ErrCorrupt)
	}
	if r.Raw[5]|r.Raw[6]|r.Raw[7] != 0 {
		return nil, fmt.Errorf("%w: sealed record seq %d: reserved bytes set", ErrCorrupt, r.Seq)
	}
	// The nonce, the type (4 bytes) then the sequence number, is bytes
	// [4, 16) of the record (the reserved bytes are zero).
	aad := sealAAD(r.Raw)
	out, err := aead.Open(dst[:0], r.Raw[4:16], r.Raw[48:], aad[:])
	if err != nil {
		return nil, fmt.Errorf("%w: sealed record seq %d (block %d) fails authentication", ErrCorrupt, r.Seq, r.Block)
	}
	return out, nil
}

// Unseal authenticates the sealed record r (as Open) and turns it, where
// it lies (r.Raw), into its unsealed form (see "Unsealed records"): for a
// writer that holds records it read back in memory, so that reading them
// does not open them again. On failure it returns ErrCorrupt and the
// record's bytes are no longer usable.
func Unseal(r Record, aead cipher.AEAD) error {
	if _, err := Open(r, aead, r.Raw[48:48]); err != nil {
		return err
	}
	rec := r.Raw
	rec[4] |= 0x80
	clear(rec[28:32])
	clear(rec[len(rec)-tagSize:])
	return nil
}

func putHeader(dst []byte, salt uint32, typ uint8, seq, block uint64, n uint32) {
	binary.LittleEndian.PutUint32(dst[0:4], salt)
	dst[4], dst[5], dst[6], dst[7] = typ, 0, 0, 0
	binary.LittleEndian.PutUint64(dst[8:], seq)
	binary.LittleEndian.PutUint64(dst[16:], block)
	binary.LittleEndian.PutUint32(dst[24:], n)
}

// PutBlock encodes a version 2 block-write record of a segment with salt
// salt into dst, which must be at least BlockRecordLen bytes long. data
// must be exactly BlockSize bytes.
func PutBlock(dst []byte, salt uint32, seq, block uint64, data []byte) {
	_ = dst[BlockRecordLen-1]
	putHeader(dst, salt, TypeBlock, seq, block, BlockSize)
	copy(dst[HeaderSize:BlockRecordLen], data)
	c := crc32.Update(CRC(dst[:28]), castagnoli, dst[HeaderSize:BlockRecordLen])
	binary.LittleEndian.PutUint32(dst[28:], c)
}

// PutTrim encodes a version 2 trim record into dst (at least HeaderSize
// bytes).
func PutTrim(dst []byte, salt uint32, seq, block uint64, count uint32) {
	_ = dst[HeaderSize-1]
	putHeader(dst, salt, TypeTrim, seq, block, count)
	binary.LittleEndian.PutUint32(dst[28:], CRC(dst[:28]))
}

// PutBlockV1 and PutTrimV1 encode version 1 records (see
// AppendSegmentHeaderV1).
func PutBlockV1(dst []byte, seq, block uint64, data []byte) {
	PutBlock(dst, recordMagic, seq, block, data)
}

// PutTrimV1: see PutBlockV1.
func PutTrimV1(dst []byte, seq, block uint64, count uint32) {
	PutTrim(dst, recordMagic, seq, block, count)
}

// RecordLen returns the encoded length of a record of type typ.
func RecordLen(typ uint8) int {
	switch typ {
	case TypeBlock:
		return BlockRecordLen
	case TypeSealedBlock, TypeUnsealedBlock:
		return SealedBlockLen
	case TypeSealedTrim, TypeUnsealedTrim:
		return SealedTrimLen
	}
	return HeaderSize
}

// ParseTrusted decodes the record at the start of b without verifying it.
// It is for records this process wrote itself.
func ParseTrusted(b []byte) Record {
	r := Record{
		Salt:  binary.LittleEndian.Uint32(b),
		Type:  b[4],
		Seq:   binary.LittleEndian.Uint64(b[8:]),
		Block: binary.LittleEndian.Uint64(b[16:]),
	}
	r.Raw = b[:RecordLen(r.Type)]
	switch r.Type {
	case TypeBlock:
		r.Count = 1
		r.Data = b[HeaderSize:BlockRecordLen]
	case TypeSealedBlock:
		r.Count = 1
		r.Data = b[HeaderSize+SealedPrefix : SealedBlockLen]
	case TypeUnsealedBlock:
		r.Count = 1
		r.Data = b[HeaderSize+SealedPrefix : HeaderSize+SealedPrefix+BlockSize]
	default:
		r.Count = binary.LittleEndian.Uint32(b[24:])
	}
	if r.Sealed() || r.Unsealed() {
		r.Epoch = binary.LittleEndian.Uint64(b[32:])
		r.KeyID = binary.LittleEndian.Uint64(b[40:])
	}
	return r
}

const zeroTrim = "trim of zero blocks"

// check verifies the record at the start of b apart from its first four
// bytes and returns its length, or a description of what is wrong and
// whether the record runs past the end of b.
func check(b []byte) (n int, short bool, what string) {
	if len(b) < HeaderSize {
		return 0, true, "record header truncated"
	}
	switch typ := b[4]; typ {
	case TypeBlock:
		if l := binary.LittleEndian.Uint32(b[24:]); l != BlockSize {
			return 0, false, fmt.Sprintf("block record length %d", l)
		}
		n = BlockRecordLen
	case TypeTrim:
		n = HeaderSize
	case TypeSealedBlock:
		if l := binary.LittleEndian.Uint32(b[24:]); l != SealedPrefix+BlockSize+tagSize {
			return 0, false, fmt.Sprintf("sealed block record length %d", l)
		}
		n = SealedBlockLen
	case TypeSealedTrim:
		n = SealedTrimLen
	default:
		return 0, false, fmt.Sprintf("unknown record type %d", typ)
	}
	if len(b) < n {
		return 0, true, fmt.Sprintf("record needs %d bytes, %d remain", n, len(b))
	}
	c := crc32.Update(CRC(b[:28]), castagnoli, b[HeaderSize:n])
	if got := binary.LittleEndian.Uint32(b[28:]); got != c {
		return 0, false, fmt.Sprintf("record CRC %08x, want %08x", got, c)
	}
	if (b[4] == TypeTrim || b[4] == TypeSealedTrim) && binary.LittleEndian.Uint32(b[24:]) == 0 {
		return 0, false, zeroTrim
	}
	return n, false, ""
}

// Decode decodes and verifies the version 1 record at the start of b,
// returning it and its encoded length. At the end of b it returns io.EOF;
// for a torn tail ErrTornTail; for anything else that is wrong ErrCorrupt
// (see "Reading a version 1 segment").
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
	n, short, what := check(b)
	switch {
	case short:
		return Record{}, 0, fmt.Errorf("%w: %s", ErrTornTail, what)
	case what == zeroTrim:
		return Record{}, 0, fmt.Errorf("%w: %s", ErrCorrupt, what)
	case what != "":
		span := HeaderSize
		if b[4] == TypeBlock && binary.LittleEndian.Uint32(b[24:]) == BlockSize {
			span = BlockRecordLen
		}
		return Record{}, 0, tornOrCorrupt(b, span, what)
	}
	return ParseTrusted(b[:n]), n, nil
}

// DecodeAny decodes and verifies one record of either version at the start
// of b, whatever its salt: for record streams outside segments, which
// carry records of several segments (each verified by its own CRC). Any
// error wraps ErrCorrupt; at the end of b it returns io.EOF.
func DecodeAny(b []byte) (Record, int, error) {
	if len(b) == 0 {
		return Record{}, 0, io.EOF
	}
	if len(b) >= 4 && !ValidSalt(binary.LittleEndian.Uint32(b)) && string(b[:4]) != RecordMagic {
		return Record{}, 0, fmt.Errorf("%w: zero salt", ErrCorrupt)
	}
	n, _, what := check(b)
	if what != "" {
		return Record{}, 0, fmt.Errorf("%w: %s", ErrCorrupt, what)
	}
	return ParseTrusted(b[:n]), n, nil
}

// Span returns the length of the log in a segment body from the record
// headers alone, reading them with readAt (offsets within the body): what
// Segment would read, but without verifying payloads. It is an estimate
// for monitoring, which need not read the data.
func Span(h SegmentHeader, readAt func(p []byte, off int64) (int, error)) int64 {
	var hdr [HeaderSize]byte
	var off int64
	var prev uint64
	for {
		if n, _ := readAt(hdr[:], off); n < HeaderSize {
			return off
		}
		salt := binary.LittleEndian.Uint32(hdr[:])
		seq := binary.LittleEndian.Uint64(hdr[8:])
		if h.Version == Version1 && salt != recordMagic || h.Version != Version1 && (salt != h.Salt || seq <= prev) {
			return off
		}
		switch hdr[4] {
		case TypeBlock, TypeTrim, TypeSealedBlock, TypeSealedTrim:
			off += int64(RecordLen(hdr[4]))
		default:
			return off
		}
		prev = seq
	}
}

// Segment reads the records of one segment body (the bytes after its
// header), following the rules of the header's version.
type Segment struct {
	h    SegmentHeader
	b    []byte
	off  int
	prev uint64 // version 2: the last live record's sequence number
}

// NewSegment returns a reader of body, the bytes that follow header h.
func NewSegment(h SegmentHeader, body []byte) *Segment { return &Segment{h: h, b: body} }

// Offset returns the body offset of the next record: after the last one
// returned, the length of the log.
func (s *Segment) Offset() int { return s.off }

// Next returns the next record and its length. At the end of the log it
// returns io.EOF, for a torn tail ErrTornTail and for corruption
// ErrCorrupt; Offset then says where the log stops.
func (s *Segment) Next() (Record, int, error) {
	if s.h.Version == Version1 {
		r, n, err := Decode(s.b[s.off:])
		if err == nil {
			s.off += n
		}
		return r, n, err
	}
	if r, n, ok := s.live(s.off); ok {
		s.off += n
		s.prev = r.Seq
		return r, n, nil
	}
	rest := s.b[s.off:]
	for i := s.off + 1; i < len(s.b); {
		k := bytes.Index(s.b[i:], s.saltBytes())
		if k < 0 {
			break
		}
		if _, _, ok := s.live(i + k); ok {
			return Record{}, 0, fmt.Errorf("%w: bad record at body offset %d, live record at %d after it", ErrCorrupt, s.off, i+k)
		}
		i += k + 1
	}
	if len(rest) == 0 || len(rest) < 4 || binary.LittleEndian.Uint32(rest) != s.h.Salt {
		return Record{}, 0, io.EOF
	}
	_, _, what := check(rest)
	if what == "" {
		// A whole record, but not above the previous one: stale.
		return Record{}, 0, io.EOF
	}
	return Record{}, 0, fmt.Errorf("%w: %s", ErrTornTail, what)
}

func (s *Segment) saltBytes() []byte {
	return binary.LittleEndian.AppendUint32(nil, s.h.Salt)
}

// live decodes the record at body offset off if it is live (see "Reading a
// version 2 segment").
func (s *Segment) live(off int) (Record, int, bool) {
	b := s.b[off:]
	if len(b) < HeaderSize || binary.LittleEndian.Uint32(b) != s.h.Salt {
		return Record{}, 0, false
	}
	n, _, what := check(b)
	if what != "" {
		return Record{}, 0, false
	}
	r := ParseTrusted(b[:n])
	if r.Seq <= s.prev {
		return Record{}, 0, false
	}
	return r, n, true
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
