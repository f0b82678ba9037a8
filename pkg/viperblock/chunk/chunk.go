// Package chunk defines the immutable chunk object: up to 1024 blocks of 4 KiB
// (4 MiB of data) with a header, a per-block index and a footer, so that a
// chunk verifies itself and a volume's block map can be rebuilt from its
// chunks alone. All integers are little-endian; CRCs are CRC32C.
//
// Two versions exist, both read. Version 1 stores blocks raw; plain volumes
// still write it (its data offsets are fixed, so a read needs no table).
// Version 2 stores the blocks in extents that may be compressed and sealed
// (encrypted and authenticated); volumes with encryption or compression
// write it.
//
// # Layout (version 1), for a chunk of c blocks
//
//	offset              size      part
//	0                   4096      header
//	4096                c*4096    block data, block i at 4096 + i*4096
//	4096 + c*4096       c*20      index
//	4096 + c*4116       32        footer
//
// # Header (version 1; one 4 KiB block, so data stays block-aligned)
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
// # Index entry (version 1; 20 bytes, one per block, in data order)
//
//	0   8  block number in the volume
//	8   8  sequence number of the write that produced the block
//	16  4  CRC32C of the block's 4096 bytes
//
// # Footer (both versions)
//
//	0   8  magic "VBCHFOOT"
//	8   4  block count c
//	12  4  CRC32C of the index bytes (everything between the header and
//	       the footer)
//	16  8  chunk id
//	24  4  reserved, zero
//	28  4  CRC32C of footer bytes [0, 28)
//
// # Layout (version 2), for a chunk of c blocks in x extents of E blocks
//
// The blocks, in slot order, are cut into x = ceil(c/E) extents of E
// consecutive slots (the last may be shorter). This build writes E = 16
// for compressed chunks (a 4 KiB read decodes at most 64 KiB) and E = 1
// for sealed, uncompressed ones (a 4 KiB read opens just its block). The
// index comes first, so that one ranged read of the chunk's first
// HeadLen2(c, E) bytes yields header and index together.
//
//	offset              size      part
//	0                   4096      header
//	4096                c*16      block entries
//	4096 + c*16         x*24      extent entries
//	...                 32        footer (as version 1)
//	4096 + IndexLen2    ...       the extents' stored bytes, back to back
//
// # Header (version 2)
//
//	offset  size  field
//	0       8     magic "VBCHUNK1"
//	8       2     format version (2)
//	10      2     length n of the volume name (at most 1024)
//	12      4     block count c (1-1024)
//	16      8     chunk id
//	24      4     block size (4096)
//	28      1     compression: 0 none, 1 zstd, 2 lz4 (block format)
//	29      1     flags: 1 = sealed
//	30      2     extent size E in blocks (1-1024)
//	32      8     sealed: id of the data key (in the manifest's key
//	              table); otherwise 0
//	40      32    sealed: random salt; otherwise zero
//	72      8     the whole chunk's size in bytes
//	80      n     name of the volume that wrote the chunk
//	80+n    ...   zero padding
//	4092    4     CRC32C of bytes [0, 4092)
//
// # Block entry (version 2; 16 bytes, one per slot)
//
//	0   8  block number in the volume
//	8   8  sequence number of the write that produced the block
//
// # Extent entry (version 2; 24 bytes, one per extent)
//
//	0   8  offset of the stored bytes in the chunk
//	8   4  stored length (at most the extent's blocks * 4096 + 16)
//	12  2  flags: 1 = compressed
//	14  2  reserved, zero
//	16  4  CRC32C of the stored bytes
//	20  4  unsealed chunk: CRC32C of the decoded bytes; sealed: zero (a
//	       checksum of plaintext would leak it)
//
// An extent's stored bytes follow each other with no gaps, the first right
// after the footer, the last ending at the chunk's size.
//
// # Extent encoding
//
// The decoded extent is its blocks' 4096-byte data, in slot order. With
// compression, the writer compresses the decoded bytes as one frame (zstd)
// or one block (lz4) and keeps the result only if it saves at least an
// eighth; otherwise the extent is stored raw (flag clear). In a sealed
// chunk the result is then sealed with AES-256-GCM: stored bytes are the
// ciphertext followed by the 16-byte tag. The key is the chunk's subkey,
// HKDF-SHA256(data key, salt, "viperblock chunk v2" 0x00 volume 0x00
// chunk id (8 bytes)), see package seal; the nonce is 1 (4 bytes) then
// the extent number (8 bytes); the additional data is the volume name,
// 0x00, the chunk id (8), the extent number (4), the extent's flags (2),
// then the extent's block entries (16 each). So a sealed extent opens only
// in its own chunk, at its own place, for the blocks and sequence numbers
// its index names: blocks cannot be swapped, moved between chunks or
// replayed from older chunks, and a changed index entry fails
// authentication like changed data does.
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
	out   []byte // version 2 encoding
	tmp   []byte // compression output
	aad   []byte
	nonce [12]byte // seal.NonceSize; here, as a local would escape to the heap
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
	Version uint16
	Volume  string
	ID      uint64
	Count   int
	// Version 2 only.
	Compression  uint8
	Sealed       bool
	ExtentBlocks int
	KeyID        uint64
	Salt         [SaltSize]byte
	Size         int64 // the whole chunk's size (version 1: Size(Count))
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
	h.Version = binary.LittleEndian.Uint16(b[8:])
	if h.Version != Version && h.Version != Version2 {
		return h, fmt.Errorf("%w: %d (this build reads %d and %d)", ErrVersion, h.Version, Version, Version2)
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
	if h.Version == Version2 {
		return decodeHeader2(b, h)
	}
	h.Size = Size(h.Count)
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

// Decode verifies a whole version 1 chunk and returns its header and index.
func Decode(b []byte) (Header, []Entry, error) {
	h, err := DecodeHeader(b)
	if err != nil {
		return h, nil, err
	}
	if h.Version != Version {
		return h, nil, fmt.Errorf("%w: version %d where 1 was expected", ErrVersion, h.Version)
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
