// Package manifest defines a volume's manifest: the small object that commits
// the volume's state in the backend (size, ownership epoch, how far the WAL
// has been drained, the chunk table and the extent map). A new manifest
// replaces the old one only by compare-and-swap, so the backend always holds
// one complete, checksummed state. A snapshot is a frozen manifest stored
// under its own key. All integers are little-endian; the CRC is CRC32C.
//
// # Layout (version 1)
//
//	offset  size    field
//	0       8       magic "VBMANIF1"
//	8       2       format version (1)
//	10      2       flags: 1 = open (a writer owns the volume), 2 = snapshot,
//	                4 = deleted (kept only because snapshots or clones
//	                still use its data), 8 = internal (a snapshot made
//	                implicitly for a clone of a volume), 16 = durable in
//	                the store (the volume's durability class is "store":
//	                a flush returns once it is in the store log)
//	12      4       block size (4096)
//	16      8       volume size in bytes
//	24      8       owner epoch (bumped by every writable open)
//	32      16      owner nonce (random, chosen by the owner of the epoch)
//	48      8       sequence high-water: every WAL record with a sequence
//	                number at or below it is contained in this state
//	56      8       commit time, Unix nanoseconds
//	64      8       id of the last drain request this state answers
//	72      2       length n of the volume name
//	74      2       length p of the parent ("volume@snapshot"; empty: none)
//	76      2       length l of the label (a snapshot's name)
//	78      2       number r of other volumes whose chunks the map uses
//	80      n+p+l   volume name, parent, label
//	...     r*(2+x) volume table entries 1..r: length u16, name (entry 0
//	                is the volume itself)
//	...     4       chunk count k
//	...     20*k    chunks, sorted by (volume, id): volume index u32, chunk
//	                id u64, block count u32, live blocks u32 (blocks the
//	                extent map references)
//	...     4       extent count e
//	...     28*e    extents, sorted by start: start block u64, block count
//	                u32, volume index u32, chunk id u64, block index in the
//	                chunk u32
//	...     4       CRC32C of every byte before it
//
// # Layout (version 2)
//
// Version 2 is version 1 with the version field 2 and, between the extents
// and the CRC, the volume's storage settings and key table. It is written
// only for volumes with compression or encryption (so plain volumes stay
// readable by older builds).
//
//	size    field
//	1       compression of the chunks the volume writes: 0 none, 1 zstd,
//	        2 lz4
//	1       reserved, zero
//	2       number q of wrapped keys
//	8       id of the data key the volume seals new data with (0: the
//	        volume writes plain data; then q is 0)
//	...     q key entries, sorted by id, ids unique and non-zero:
//	          8  key id
//	          2  length o, then o bytes: name of the volume that created
//	             the key (part of the wrapping's additional data)
//	          2  length k, then k bytes: id of the KEK that wraps it
//	          2  length w, then w bytes: the wrapped key (see package
//	             seal; at most 4096)
//
// A clone's table holds its ancestors' keys, so that it can read the chunks
// it shares with them, and a key of its own for its writes.
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
	Version2   = 2
	Magic      = "VBMANIF1"
	BlockSize  = 4096
	fixedSize  = 80
	chunkSize  = 20
	extentSize = 28
	MaxNameLen = 1024
	MaxRefs    = 4096
)

// Flags.
const (
	FlagOpen     uint16 = 1
	FlagSnapshot uint16 = 2
	FlagDeleted  uint16 = 4
	FlagInternal uint16 = 8
	// FlagDurableStore: the volume's durability class is "store". Older
	// readers refuse the flag, so they never serve such a volume with a
	// weaker promise.
	FlagDurableStore uint16 = 16
)

// Errors.
var (
	ErrCorrupt = errors.New("viperblock/manifest: corrupt manifest")
	ErrVersion = errors.New("viperblock/manifest: unsupported manifest version")
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Chunk is one chunk table entry.
type Chunk struct {
	Vol    uint32
	ID     uint64
	Blocks uint32
	Live   uint32
}

// Ref returns the chunk's reference.
func (c Chunk) Ref() blockmap.ChunkRef { return blockmap.ChunkRef{Vol: c.Vol, ID: c.ID} }

// Manifest is a decoded manifest.
type Manifest struct {
	Flags     uint16
	Size      int64
	Epoch     uint64
	Owner     [16]byte
	SeqHW     uint64
	Committed int64 // Unix nanoseconds
	Request   uint64
	Name      string
	Parent    string
	Label     string
	Refs      []string // volume table entries 1..r
	Chunks    []Chunk
	Extents   []blockmap.Extent
	// Version 2.
	Compression uint8
	WriteKey    uint64 // the data key new data is sealed with; 0: plain
	Keys        []WrappedKey
}

// WrappedKey is one key table entry.
type WrappedKey struct {
	ID      uint64
	Origin  string // volume that created the key
	KEKID   string
	Wrapped []byte
}

// MaxWrapped bounds a wrapped key's encoding.
const MaxWrapped = 4096

// Encrypted reports whether the volume seals its data.
func (m *Manifest) Encrypted() bool { return m.WriteKey != 0 }

// Key returns the table entry of key id.
func (m *Manifest) Key(id uint64) (WrappedKey, bool) {
	for _, k := range m.Keys {
		if k.ID == id {
			return k, true
		}
	}
	return WrappedKey{}, false
}

func (m *Manifest) v2() bool { return m.Compression != 0 || m.WriteKey != 0 || len(m.Keys) > 0 }

// VolumeName returns the name of volume-table entry i.
func (m *Manifest) VolumeName(i uint32) string {
	if i == 0 {
		return m.Name
	}
	return m.Refs[i-1]
}

// Encode returns m's encoding.
func Encode(m *Manifest) []byte {
	n := fixedSize + len(m.Name) + len(m.Parent) + len(m.Label) + 4 + chunkSize*len(m.Chunks) + 4 + extentSize*len(m.Extents) + 4
	for _, r := range m.Refs {
		n += 2 + len(r)
	}
	for _, k := range m.Keys {
		n += 14 + len(k.Origin) + len(k.KEKID) + len(k.Wrapped)
	}
	b := make([]byte, 0, n+12)
	le := binary.LittleEndian
	b = append(b, Magic...)
	if m.v2() {
		b = le.AppendUint16(b, Version2)
	} else {
		b = le.AppendUint16(b, Version)
	}
	b = le.AppendUint16(b, m.Flags)
	b = le.AppendUint32(b, BlockSize)
	b = le.AppendUint64(b, uint64(m.Size))
	b = le.AppendUint64(b, m.Epoch)
	b = append(b, m.Owner[:]...)
	b = le.AppendUint64(b, m.SeqHW)
	b = le.AppendUint64(b, uint64(m.Committed))
	b = le.AppendUint64(b, m.Request)
	b = le.AppendUint16(b, uint16(len(m.Name)))
	b = le.AppendUint16(b, uint16(len(m.Parent)))
	b = le.AppendUint16(b, uint16(len(m.Label)))
	b = le.AppendUint16(b, uint16(len(m.Refs)))
	b = append(b, m.Name...)
	b = append(b, m.Parent...)
	b = append(b, m.Label...)
	for _, r := range m.Refs {
		b = le.AppendUint16(b, uint16(len(r)))
		b = append(b, r...)
	}
	b = le.AppendUint32(b, uint32(len(m.Chunks)))
	for _, c := range m.Chunks {
		b = le.AppendUint32(b, c.Vol)
		b = le.AppendUint64(b, c.ID)
		b = le.AppendUint32(b, c.Blocks)
		b = le.AppendUint32(b, c.Live)
	}
	b = le.AppendUint32(b, uint32(len(m.Extents)))
	for _, e := range m.Extents {
		b = le.AppendUint64(b, e.Start)
		b = le.AppendUint32(b, e.Count)
		b = le.AppendUint32(b, e.Vol)
		b = le.AppendUint64(b, e.Chunk)
		b = le.AppendUint32(b, e.Off)
	}
	if m.v2() {
		b = append(b, m.Compression, 0)
		b = le.AppendUint16(b, uint16(len(m.Keys)))
		b = le.AppendUint64(b, m.WriteKey)
		for _, k := range m.Keys {
			b = le.AppendUint64(b, k.ID)
			for _, f := range [][]byte{[]byte(k.Origin), []byte(k.KEKID), k.Wrapped} {
				b = le.AppendUint16(b, uint16(len(f)))
				b = append(b, f...)
			}
		}
	}
	return le.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

func corrupt(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, a...))
}

func refLess(a, b blockmap.ChunkRef) bool {
	if a.Vol != b.Vol {
		return a.Vol < b.Vol
	}
	return a.ID < b.ID
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
	ver := le.Uint16(b[8:])
	if ver != Version && ver != Version2 {
		return nil, fmt.Errorf("%w: %d (this build reads %d and %d)", ErrVersion, ver, Version, Version2)
	}
	body := b[:len(b)-4]
	if got, want := le.Uint32(b[len(b)-4:]), crc32.Checksum(body, castagnoli); got != want {
		return nil, corrupt("CRC %08x, want %08x", got, want)
	}
	if bs := le.Uint32(b[12:]); bs != BlockSize {
		return nil, corrupt("block size %d", bs)
	}
	m := &Manifest{
		Flags:     le.Uint16(b[10:]),
		Size:      int64(le.Uint64(b[16:])),
		Epoch:     le.Uint64(b[24:]),
		SeqHW:     le.Uint64(b[48:]),
		Committed: int64(le.Uint64(b[56:])),
		Request:   le.Uint64(b[64:]),
	}
	if m.Flags&^(FlagOpen|FlagSnapshot|FlagDeleted|FlagInternal|FlagDurableStore) != 0 {
		return nil, corrupt("unknown flags %#x", m.Flags)
	}
	copy(m.Owner[:], b[32:48])
	n, p, l, r := int(le.Uint16(b[72:])), int(le.Uint16(b[74:])), int(le.Uint16(b[76:])), int(le.Uint16(b[78:]))
	if n > MaxNameLen || p > MaxNameLen || l > MaxNameLen || r > MaxRefs {
		return nil, corrupt("name lengths %d, %d, %d, %d volumes", n, p, l, r)
	}
	rest := body[fixedSize:]
	if len(rest) < n+p+l {
		return nil, corrupt("truncated names")
	}
	m.Name, m.Parent, m.Label = string(rest[:n]), string(rest[n:n+p]), string(rest[n+p:n+p+l])
	rest = rest[n+p+l:]
	for i := 0; i < r; i++ {
		if len(rest) < 2 || len(rest) < 2+int(le.Uint16(rest)) {
			return nil, corrupt("truncated volume table")
		}
		k := int(le.Uint16(rest))
		if k == 0 || k > MaxNameLen {
			return nil, corrupt("volume table entry %d of length %d", i+1, k)
		}
		m.Refs = append(m.Refs, string(rest[2:2+k]))
		rest = rest[2+k:]
	}
	if len(rest) < 4 {
		return nil, corrupt("truncated chunk table")
	}
	k := int(le.Uint32(rest))
	rest = rest[4:]
	if k < 0 || k > len(rest)/chunkSize {
		return nil, corrupt("chunk table of %d entries does not fit", k)
	}
	m.Chunks = make([]Chunk, k)
	blocks := make(map[blockmap.ChunkRef]uint32, k)
	for i := range m.Chunks {
		e := rest[i*chunkSize:]
		c := Chunk{le.Uint32(e), le.Uint64(e[4:]), le.Uint32(e[12:]), le.Uint32(e[16:])}
		if c.ID == 0 || int(c.Vol) > r || c.Blocks == 0 || c.Blocks > 1024 || c.Live > c.Blocks || (i > 0 && !refLess(m.Chunks[i-1].Ref(), c.Ref())) {
			return nil, corrupt("chunk entry %d %+v", i, c)
		}
		m.Chunks[i] = c
		blocks[c.Ref()] = c.Blocks
	}
	rest = rest[k*chunkSize:]
	if len(rest) < 4 {
		return nil, corrupt("truncated extent list")
	}
	ne := int(le.Uint32(rest))
	rest = rest[4:]
	if ne < 0 || len(rest) < ne*extentSize || (ver == Version && len(rest) != ne*extentSize) {
		return nil, corrupt("extent list of %d entries in %d bytes", ne, len(rest))
	}
	if ver == Version2 {
		if err := m.decodeV2(rest[ne*extentSize:]); err != nil {
			return nil, err
		}
		rest = rest[:ne*extentSize]
	}
	m.Extents = make([]blockmap.Extent, ne)
	for i := range m.Extents {
		e := rest[i*extentSize:]
		m.Extents[i] = blockmap.Extent{Start: le.Uint64(e), Count: le.Uint32(e[8:]), Vol: le.Uint32(e[12:]), Chunk: le.Uint64(e[16:]), Off: le.Uint32(e[24:])}
	}
	if m.Size <= 0 || m.Size%BlockSize != 0 {
		return nil, corrupt("volume size %d", m.Size)
	}
	if err := blockmap.Validate(m.Extents, uint64(m.Size/BlockSize)); err != nil {
		return nil, corrupt("%v", err)
	}
	for i, e := range m.Extents {
		cb, ok := blocks[e.Ref()]
		if !ok || uint64(e.Off)+uint64(e.Count) > uint64(cb) {
			return nil, corrupt("extent %d %v references a missing chunk or lies past its end", i, e)
		}
	}
	return m, nil
}

func (m *Manifest) decodeV2(b []byte) error {
	le := binary.LittleEndian
	if len(b) < 12 {
		return corrupt("truncated version 2 settings")
	}
	m.Compression = b[0]
	q := int(le.Uint16(b[2:]))
	m.WriteKey = le.Uint64(b[4:])
	if m.Compression > 2 || b[1] != 0 {
		return corrupt("compression %d, reserved %d", b[0], b[1])
	}
	b = b[12:]
	for i := 0; i < q; i++ {
		if len(b) < 8 {
			return corrupt("truncated key table")
		}
		k := WrappedKey{ID: le.Uint64(b)}
		b = b[8:]
		var fields [3][]byte
		for j := range fields {
			if len(b) < 2 || len(b) < 2+int(le.Uint16(b)) {
				return corrupt("truncated key table entry %d", i)
			}
			l := int(le.Uint16(b))
			fields[j] = b[2 : 2+l]
			b = b[2+l:]
		}
		k.Origin, k.KEKID, k.Wrapped = string(fields[0]), string(fields[1]), append([]byte(nil), fields[2]...)
		if k.ID == 0 || (i > 0 && k.ID <= m.Keys[i-1].ID) || len(k.Origin) == 0 || len(k.Origin) > MaxNameLen || len(k.Wrapped) == 0 || len(k.Wrapped) > MaxWrapped {
			return corrupt("key table entry %d (id %016x)", i, k.ID)
		}
		m.Keys = append(m.Keys, k)
	}
	if len(b) != 0 {
		return corrupt("%d bytes after the key table", len(b))
	}
	if _, ok := m.Key(m.WriteKey); m.WriteKey != 0 && !ok {
		return corrupt("write key %016x is not in the key table", m.WriteKey)
	}
	if m.WriteKey == 0 && q != 0 {
		return corrupt("a plain volume with %d keys", q)
	}
	return nil
}

// SetChunks rebuilds m's chunk table from known chunk sizes, recounting live
// blocks from m's extents and dropping chunks no extent references.
func (m *Manifest) SetChunks(sizes map[blockmap.ChunkRef]uint32) {
	live := blockmap.New(m.Extents).LiveBlocks()
	m.Chunks = m.Chunks[:0:0]
	for ref, n := range live {
		m.Chunks = append(m.Chunks, Chunk{Vol: ref.Vol, ID: ref.ID, Blocks: sizes[ref], Live: n})
	}
	sort.Slice(m.Chunks, func(i, j int) bool { return refLess(m.Chunks[i].Ref(), m.Chunks[j].Ref()) })
}

// Sizes returns the block count of every chunk in the table.
func (m *Manifest) Sizes() map[blockmap.ChunkRef]uint32 {
	s := make(map[blockmap.ChunkRef]uint32, len(m.Chunks))
	for _, c := range m.Chunks {
		s[c.Ref()] = c.Blocks
	}
	return s
}

// AddKey inserts k into the key table, kept sorted by id.
func (m *Manifest) AddKey(k WrappedKey) {
	i := sort.Search(len(m.Keys), func(i int) bool { return m.Keys[i].ID >= k.ID })
	m.Keys = append(m.Keys, WrappedKey{})
	copy(m.Keys[i+1:], m.Keys[i:])
	m.Keys[i] = k
}
