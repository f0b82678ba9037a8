package nemesis

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
)

// The value every write puts in its 4 KiB block, little-endian:
//
//	offset size  field
//	     0    8  magic "NEMESIS1"
//	     8    8  run tag: identifies the schedule (seed and index)
//	    16    8  write id: unique within the schedule, from 1
//	    24    4  node that issued the write
//	    28    4  server incarnation the write was sent to
//	    32    8  block number the write was sent to
//	    40 4052  filler derived from the write id and the tag
//	  4092    4  CRC32C (Castagnoli) of bytes 0..4091
//
// A block read back is either all zeros (never written), or decodes to the
// exact write that put it there. Anything else is a violation: a bad magic
// or checksum is a torn or garbage block, another tag a value from another
// schedule, another block number a misplaced write.
const (
	blockSize  = 4096
	valueMagic = "NEMESIS1"
	crcOffset  = blockSize - 4
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// value is what a write stores.
type value struct {
	Tag   uint64
	ID    uint64
	Node  uint32
	Inc   uint32
	Block uint64
}

// Errors of decodeValue.
var (
	errTorn      = errors.New("nemesis: undecodable block (torn write or garbage)")
	errForeign   = errors.New("nemesis: value from another schedule")
	errMisplaced = errors.New("nemesis: value written to another block")
)

// encodeValue returns v's 4 KiB block.
func encodeValue(v value) []byte {
	b := make([]byte, blockSize)
	copy(b, valueMagic)
	binary.LittleEndian.PutUint64(b[8:], v.Tag)
	binary.LittleEndian.PutUint64(b[16:], v.ID)
	binary.LittleEndian.PutUint32(b[24:], v.Node)
	binary.LittleEndian.PutUint32(b[28:], v.Inc)
	binary.LittleEndian.PutUint64(b[32:], v.Block)
	x := v.ID*0x9e3779b97f4a7c15 ^ v.Tag | 1 // xorshift64 state, never 0
	for i := 40; i+8 <= crcOffset; i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(b[i:], x)
	}
	binary.LittleEndian.PutUint32(b[crcOffset:], crc32.Checksum(b[:crcOffset], castagnoli))
	return b
}

// decodeValue decodes a block read from block number block of the schedule
// tagged tag. zero is true for an all-zero block (never written).
func decodeValue(b []byte, tag, block uint64) (v value, zero bool, err error) {
	if len(b) != blockSize {
		return value{}, false, errTorn
	}
	if isZero(b) {
		return value{}, true, nil
	}
	if string(b[:8]) != valueMagic || binary.LittleEndian.Uint32(b[crcOffset:]) != crc32.Checksum(b[:crcOffset], castagnoli) {
		return value{}, false, errTorn
	}
	v = value{
		Tag:   binary.LittleEndian.Uint64(b[8:]),
		ID:    binary.LittleEndian.Uint64(b[16:]),
		Node:  binary.LittleEndian.Uint32(b[24:]),
		Inc:   binary.LittleEndian.Uint32(b[28:]),
		Block: binary.LittleEndian.Uint64(b[32:]),
	}
	switch {
	case v.Tag != tag:
		return v, false, errForeign
	case v.Block != block:
		return v, false, errMisplaced
	}
	return v, false, nil
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
