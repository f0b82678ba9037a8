// Package manifest defines a volume's manifest: the small object that commits
// the volume's state in the backend (size, ownership epoch, how far the WAL
// has been drained, the chunk table and the extent map). A new manifest
// replaces the old one only by compare-and-swap, so the backend always holds
// one complete, checksummed state. All integers are little-endian; the CRC is
// CRC32C.
//
// # Layout (version 1)
//
//	offset  size    field
//	0       8       magic "VBMANIF1"
//	8       2       format version (1)
//	10      2       flags, zero
//	12      4       block size (4096)
//	16      8       volume size in bytes
//	24      8       owner epoch (bumped by every writable open)
//	32      16      owner nonce (random, chosen by the owner of the epoch)
//	48      8       sequence high-water: every WAL record with a sequence
//	                number at or below it is contained in this state
//	56      8       reserved, zero
//	64      2       length n of the volume name
//	66      2       length p of the parent reference (empty: no parent)
//	68      4       reserved, zero
//	72      n       volume name
//	72+n    p       parent reference
//	...     4       chunk count k
//	...     16*k    chunks, sorted by id: id u64, block count u32, live
//	                blocks u32 (blocks the extent map references)
//	...     4       extent count e
//	...     24*e    extents, sorted by start: start block u64, block count
//	                u32, chunk id u64, block index in the chunk u32
//	...     4       CRC32C of every byte before it
package manifest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"sort"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/blockmap"
)

// Format constants.
const (
	Version    = 1
	Magic      = "VBMANIF1"
	BlockSize  = 4096
	fixedSize  = 72
	chunkSize  = 16
	extentSize = 24
	MaxNameLen = 1024
)

// Errors.
var (
	ErrCorrupt = errors.New("viperblock/manifest: corrupt manifest")
	ErrVersion = errors.New("viperblock/manifest: unsupported manifest version")
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Chunk is one chunk table entry.
type Chunk struct {
	ID     uint64
	Blocks uint32
	Live   uint32
}

// Manifest is a decoded manifest.
type Manifest struct {
	Size    int64
	Epoch   uint64
	Owner   [16]byte
	SeqHW   uint64
	Name    string
	Parent  string
	Chunks  []Chunk
	Extents []blockmap.Extent
}

// Encode returns m's encoding.
func Encode(m *Manifest) []byte {
	n := fixedSize + len(m.Name) + len(m.Parent) + 4 + chunkSize*len(m.Chunks) + 4 + extentSize*len(m.Extents) + 4
	b := make([]byte, 0, n)
	le := binary.LittleEndian
	b = append(b, Magic...)
	b = le.AppendUint16(b, Version)
	b = le.AppendUint16(b, 0)
	b = le.AppendUint32(b, BlockSize)
	b = le.AppendUint64(b, uint64(m.Size))
	b = le.AppendUint64(b, m.Epoch)
	b = append(b, m.Owner[:]...)
	b = le.AppendUint64(b, m.SeqHW)
	b = le.AppendUint64(b, 0)
	b = le.AppendUint16(b, uint16(len(m.Name)))
	b = le.AppendUint16(b, uint16(len(m.Parent)))
	b = le.AppendUint32(b, 0)
	b = append(b, m.Name...)
	b = append(b, m.Parent...)
	b = le.AppendUint32(b, uint32(len(m.Chunks)))
	for _, c := range m.Chunks {
		b = le.AppendUint64(b, c.ID)
		b = le.AppendUint32(b, c.Blocks)
		b = le.AppendUint32(b, c.Live)
	}
	b = le.AppendUint32(b, uint32(len(m.Extents)))
	for _, e := range m.Extents {
		b = le.AppendUint64(b, e.Start)
		b = le.AppendUint32(b, e.Count)
		b = le.AppendUint64(b, e.Chunk)
		b = le.AppendUint32(b, e.Off)
	}
	return le.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

func corrupt(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, a...))
}

// Decode decodes and fully validates a manifest.
func Decode(b []byte) (*Manifest, error) {
	le := binary.LittleEndian
	if len(b) < fixedSize+12 {
		return nil, corrupt("%d bytes is too short", len(b))
	}
	if string(b[:8]) != Magic {
		return nil, corrupt("bad magic %q", b[:8])
	}
	if v := le.Uint16(b[8:]); v != Version {
		return nil, fmt.Errorf("%w: %d (this build reads %d)", ErrVersion, v, Version)
	}
	body := b[:len(b)-4]
	if got, want := le.Uint32(b[len(b)-4:]), crc32.Checksum(body, castagnoli); got != want {
		return nil, corrupt("CRC %08x, want %08x", got, want)
	}
	if bs := le.Uint32(b[12:]); bs != BlockSize {
		return nil, corrupt("block size %d", bs)
	}
	m := &Manifest{
		Size:  int64(le.Uint64(b[16:])),
		Epoch: le.Uint64(b[24:]),
		SeqHW: le.Uint64(b[48:]),
	}
	copy(m.Owner[:], b[32:48])
	n, p := int(le.Uint16(b[64:])), int(le.Uint16(b[66:]))
	if n > MaxNameLen || p > MaxNameLen {
		return nil, corrupt("name lengths %d, %d", n, p)
	}
	rest := body[fixedSize:]
	if len(rest) < n+p+4 {
		return nil, corrupt("truncated names")
	}
	m.Name, m.Parent = string(rest[:n]), string(rest[n:n+p])
	rest = rest[n+p:]
	k := int(le.Uint32(rest))
	rest = rest[4:]
	if k < 0 || len(rest) < k*chunkSize+4 {
		return nil, corrupt("chunk table of %d entries does not fit", k)
	}
	m.Chunks = make([]Chunk, k)
	blocks := make(map[uint64]uint32, k)
	for i := range m.Chunks {
		e := rest[i*chunkSize:]
		c := Chunk{le.Uint64(e), le.Uint32(e[8:]), le.Uint32(e[12:])}
		if c.ID == 0 || c.Blocks == 0 || c.Blocks > 1024 || c.Live > c.Blocks || (i > 0 && c.ID <= m.Chunks[i-1].ID) {
			return nil, corrupt("chunk entry %d %+v", i, c)
		}
		m.Chunks[i] = c
		blocks[c.ID] = c.Blocks
	}
	rest = rest[k*chunkSize:]
	ne := int(le.Uint32(rest))
	rest = rest[4:]
	if ne < 0 || len(rest) != ne*extentSize {
		return nil, corrupt("extent list of %d entries in %d bytes", ne, len(rest))
	}
	m.Extents = make([]blockmap.Extent, ne)
	for i := range m.Extents {
		e := rest[i*extentSize:]
		m.Extents[i] = blockmap.Extent{Start: le.Uint64(e), Count: le.Uint32(e[8:]), Chunk: le.Uint64(e[12:]), Off: le.Uint32(e[20:])}
	}
	if m.Size <= 0 || m.Size%BlockSize != 0 {
		return nil, corrupt("volume size %d", m.Size)
	}
	if err := blockmap.Validate(m.Extents, uint64(m.Size/BlockSize)); err != nil {
		return nil, corrupt("%v", err)
	}
	for i, e := range m.Extents {
		cb, ok := blocks[e.Chunk]
		if !ok || uint64(e.Off)+uint64(e.Count) > uint64(cb) {
			return nil, corrupt("extent %d %v references a missing chunk or lies past its end", i, e)
		}
	}
	return m, nil
}

// SetChunks rebuilds m's chunk table from known chunk sizes, recounting live
// blocks from m's extents and dropping chunks no extent references.
func (m *Manifest) SetChunks(sizes map[uint64]uint32) {
	live := blockmap.New(m.Extents).LiveBlocks()
	m.Chunks = m.Chunks[:0:0]
	for id, n := range live {
		m.Chunks = append(m.Chunks, Chunk{ID: id, Blocks: sizes[id], Live: n})
	}
	sort.Slice(m.Chunks, func(i, j int) bool { return m.Chunks[i].ID < m.Chunks[j].ID })
}
