// Package chunk defines the immutable chunk object: up to 1024 blocks of 4 KiB
// (4 MiB of data) with a header, a per-block index and a footer, so that a
// chunk verifies itself and a volume's block map can be rebuilt from its
// chunks alone. All integers are little-endian; CRCs are CRC32C.
//
// # Layout (version 1), for a chunk of c blocks
//
//	offset              size      part
//	0                   4096      header
//	4096                c*4096    block data, block i at 4096 + i*4096
//	4096 + c*4096       c*20      index
//	4096 + c*4116       32        footer
//
// # Header (one 4 KiB block, so data stays block-aligned)
//
//	offset  size  field
//	0       8     magic "VBCHUNK1"
//	8       2     format version (1)
//	10      2     length n of the volume name (at most 1024)
//	12      4     block count c (1-1024)
//	16      8     chunk id
//	24      4     block size (4096)
//	28      4     reserved, zero
//	32      n     volume name
//	32+n    ...   zero padding
//	4092    4     CRC32C of bytes [0, 4092)
//
// # Index entry (20 bytes, one per block, in data order)
//
//	0   8  block number in the volume
//	8   8  sequence number of the write that produced the block
//	16  4  CRC32C of the block's 4096 bytes
//
// # Footer
//
//	0   8  magic "VBCHFOOT"
//	8   4  block count c
//	12  4  CRC32C of the index bytes
//	16  8  chunk id
//	24  4  reserved, zero
//	28  4  CRC32C of footer bytes [0, 28)
package chunk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// Format constants.
const (
	Version    = 1
	Magic      = "VBCHUNK1"
	FootMagic  = "VBCHFOOT"
	BlockSize  = 4096
	HeaderSize = 4096
	EntrySize  = 20
	FooterSize = 32
	MaxBlocks  = 1024
	MaxNameLen = 1024
)

// Errors.
var (
	ErrCorrupt = errors.New("viperblock/chunk: corrupt chunk")
	ErrVersion = errors.New("viperblock/chunk: unsupported chunk version")
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func crc(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// DataOffset is the byte offset of block i's data.
func DataOffset(i int) int64 { return HeaderSize + int64(i)*BlockSize }

// IndexOffset is the byte offset of the index of a chunk of count blocks.
func IndexOffset(count int) int64 { return HeaderSize + int64(count)*BlockSize }

// IndexLen is the length of the index plus footer of a chunk of count blocks.
func IndexLen(count int) int64 { return int64(count)*EntrySize + FooterSize }

// Size is the total size of a chunk of count blocks.
func Size(count int) int64 { return IndexOffset(count) + IndexLen(count) }

// Entry is one index entry.
type Entry struct {
	Block uint64
	Seq   uint64
	CRC   uint32
}

// Builder assembles a chunk in a reusable buffer.
type Builder struct {
	buf   []byte
	index []Entry
}

// Reset starts a new chunk.
func (b *Builder) Reset() {
	if cap(b.buf) < int(Size(MaxBlocks)) {
		b.buf = make([]byte, HeaderSize, Size(MaxBlocks))
	}
	b.buf = b.buf[:HeaderSize]
	b.index = b.index[:0]
}

// Len is the number of blocks added so far.
func (b *Builder) Len() int { return len(b.index) }

// Add appends one block.
func (b *Builder) Add(block, seq uint64, data []byte) {
	if len(data) != BlockSize {
		panic("chunk: block data must be 4096 bytes")
	}
	b.buf = append(b.buf, data...)
	b.index = append(b.index, Entry{block, seq, crc(data)})
}

// Finish completes the chunk and returns its encoding, which aliases the
// builder's buffer until the next Reset.
func (b *Builder) Finish(volume string, id uint64) []byte {
	c := len(b.index)
	if c == 0 || c > MaxBlocks {
		panic(fmt.Sprintf("chunk: %d blocks", c))
	}
	h := b.buf[:HeaderSize]
	clear(h)
	copy(h, Magic)
	binary.LittleEndian.PutUint16(h[8:], Version)
	binary.LittleEndian.PutUint16(h[10:], uint16(len(volume)))
	binary.LittleEndian.PutUint32(h[12:], uint32(c))
	binary.LittleEndian.PutUint64(h[16:], id)
	binary.LittleEndian.PutUint32(h[24:], BlockSize)
	copy(h[32:HeaderSize-4], volume)
	binary.LittleEndian.PutUint32(h[HeaderSize-4:], crc(h[:HeaderSize-4]))
	start := len(b.buf)
	for _, e := range b.index {
		b.buf = binary.LittleEndian.AppendUint64(b.buf, e.Block)
		b.buf = binary.LittleEndian.AppendUint64(b.buf, e.Seq)
		b.buf = binary.LittleEndian.AppendUint32(b.buf, e.CRC)
	}
	icrc := crc(b.buf[start:])
	f := len(b.buf)
	b.buf = append(b.buf, FootMagic...)
	b.buf = binary.LittleEndian.AppendUint32(b.buf, uint32(c))
	b.buf = binary.LittleEndian.AppendUint32(b.buf, icrc)
	b.buf = binary.LittleEndian.AppendUint64(b.buf, id)
	b.buf = binary.LittleEndian.AppendUint32(b.buf, 0)
	b.buf = binary.LittleEndian.AppendUint32(b.buf, crc(b.buf[f:]))
	return b.buf
}

// Header is a decoded chunk header.
type Header struct {
	Volume string
	ID     uint64
	Count  int
}

// DecodeHeader decodes and verifies a chunk header (the first 4096 bytes).
func DecodeHeader(b []byte) (Header, error) {
	var h Header
	if len(b) < HeaderSize {
		return h, fmt.Errorf("%w: header truncated (%d bytes)", ErrCorrupt, len(b))
	}
	if string(b[:8]) != Magic {
		return h, fmt.Errorf("%w: bad magic %q", ErrCorrupt, b[:8])
	}
	if v := binary.LittleEndian.Uint16(b[8:]); v != Version {
		return h, fmt.Errorf("%w: %d (this build reads %d)", ErrVersion, v, Version)
	}
	if got, want := binary.LittleEndian.Uint32(b[HeaderSize-4:]), crc(b[:HeaderSize-4]); got != want {
		return h, fmt.Errorf("%w: header CRC %08x, want %08x", ErrCorrupt, got, want)
	}
	n := int(binary.LittleEndian.Uint16(b[10:]))
	h.Count = int(binary.LittleEndian.Uint32(b[12:]))
	h.ID = binary.LittleEndian.Uint64(b[16:])
	if bs := binary.LittleEndian.Uint32(b[24:]); bs != BlockSize {
		return h, fmt.Errorf("%w: block size %d", ErrCorrupt, bs)
	}
	if n > MaxNameLen || 32+n > HeaderSize-4 || h.Count < 1 || h.Count > MaxBlocks {
		return h, fmt.Errorf("%w: name length %d, block count %d", ErrCorrupt, n, h.Count)
	}
	h.Volume = string(b[32 : 32+n])
	return h, nil
}

// DecodeIndex decodes and verifies the index and footer of a chunk of count
// blocks with the given id. b is the chunk's last IndexLen(count) bytes.
func DecodeIndex(b []byte, id uint64, count int) ([]Entry, error) {
	if count < 1 || count > MaxBlocks {
		return nil, fmt.Errorf("%w: block count %d", ErrCorrupt, count)
	}
	if int64(len(b)) != IndexLen(count) {
		return nil, fmt.Errorf("%w: index is %d bytes, want %d", ErrCorrupt, len(b), IndexLen(count))
	}
	f := b[count*EntrySize:]
	if string(f[:8]) != FootMagic {
		return nil, fmt.Errorf("%w: bad footer magic %q", ErrCorrupt, f[:8])
	}
	if got, want := binary.LittleEndian.Uint32(f[28:]), crc(f[:28]); got != want {
		return nil, fmt.Errorf("%w: footer CRC %08x, want %08x", ErrCorrupt, got, want)
	}
	if c := int(binary.LittleEndian.Uint32(f[8:])); c != count {
		return nil, fmt.Errorf("%w: footer says %d blocks, want %d", ErrCorrupt, c, count)
	}
	if fid := binary.LittleEndian.Uint64(f[16:]); fid != id {
		return nil, fmt.Errorf("%w: footer says chunk %016x, want %016x", ErrCorrupt, fid, id)
	}
	idx := b[:count*EntrySize]
	if got, want := binary.LittleEndian.Uint32(f[12:]), crc(idx); got != want {
		return nil, fmt.Errorf("%w: index CRC %08x, want %08x", ErrCorrupt, got, want)
	}
	out := make([]Entry, count)
	for i := range out {
		e := idx[i*EntrySize:]
		out[i] = Entry{binary.LittleEndian.Uint64(e), binary.LittleEndian.Uint64(e[8:]), binary.LittleEndian.Uint32(e[16:])}
	}
	return out, nil
}

// VerifyBlock checks one block's data against its index entry.
func VerifyBlock(data []byte, e Entry) error {
	if got := crc(data); got != e.CRC {
		return fmt.Errorf("%w: block %d data CRC %08x, want %08x", ErrCorrupt, e.Block, got, e.CRC)
	}
	return nil
}

// Decode verifies a whole chunk and returns its header and index.
func Decode(b []byte) (Header, []Entry, error) {
	h, err := DecodeHeader(b)
	if err != nil {
		return h, nil, err
	}
	if int64(len(b)) != Size(h.Count) {
		return h, nil, fmt.Errorf("%w: chunk is %d bytes, want %d for %d blocks", ErrCorrupt, len(b), Size(h.Count), h.Count)
	}
	idx, err := DecodeIndex(b[IndexOffset(h.Count):], h.ID, h.Count)
	if err != nil {
		return h, nil, err
	}
	for i, e := range idx {
		off := DataOffset(i)
		if err := VerifyBlock(b[off:off+BlockSize], e); err != nil {
			return h, nil, err
		}
	}
	return h, idx, nil
}
