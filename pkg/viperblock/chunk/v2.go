package chunk

import (
	"crypto/cipher"
	"encoding/binary"
	"fmt"
	"sync"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/seal"
)

// Version 2 constants.
const (
	Version2      = 2
	ExtentBlocks  = 16 // blocks per extent of compressed chunks (Params.ExtentBlocks' default)
	BlockEntry2   = 16
	ExtentEntry2  = 24
	SaltSize      = 32
	headerFixed2  = 80
	extCompressed = 1
	sealPurpose   = "viperblock chunk v2"
)

// Compression algorithms (header byte 28).
const (
	CompressNone uint8 = 0
	CompressZstd uint8 = 1
	CompressLZ4  uint8 = 2
)

// Header flags (header byte 29).
const FlagSealed uint8 = 1

// ExtentEntry is one version 2 extent table entry.
type ExtentEntry struct {
	Off    int64  // stored offset in the chunk
	Len    uint32 // stored length
	Flags  uint16 // 1: compressed
	CRC    uint32 // CRC32C of the stored bytes
	RawCRC uint32 // CRC32C of the decoded bytes (zero in a sealed chunk)
}

// Compressed reports whether the extent is stored compressed.
func (e ExtentEntry) Compressed() bool { return e.Flags&extCompressed != 0 }

// Index is a decoded chunk index: per-block entries (in version 2 without
// CRCs) and, for version 2, the extent table.
type Index struct {
	Header  Header
	Entries []Entry
	Extents []ExtentEntry
}

// IndexLen2 is the length of a version 2 index plus footer for a chunk of
// count blocks in extents of e blocks.
func IndexLen2(count, e int) int64 {
	x := (count + e - 1) / e
	return int64(count)*BlockEntry2 + int64(x)*ExtentEntry2 + FooterSize
}

// HeadLen2 is the length of a version 2 chunk's header and index, for a
// chunk of count blocks in extents of e blocks: one ranged read of this
// many bytes from offset 0 yields both.
func HeadLen2(count, e int) int64 { return HeaderSize + IndexLen2(count, e) }

// Params choose how Finish2 stores a chunk.
type Params struct {
	// ExtentBlocks is the extent size (default ExtentBlocks). Compression
	// wants extents of several blocks; a sealed, uncompressed chunk is
	// best with one block per extent (a 4 KiB read opens 4 KiB).
	ExtentBlocks int
	Compression  uint8
	// Sealed, with KeyID and Key: seal every extent under a subkey of Key.
	Sealed bool
	KeyID  uint64
	Key    seal.Key
}

var (
	zstdOnce sync.Once
	zenc     *zstd.Encoder
	zdec     *zstd.Decoder
)

func zstdCodecs() (*zstd.Encoder, *zstd.Decoder) {
	zstdOnce.Do(func() {
		var err error
		zenc, err = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1), zstd.WithLowerEncoderMem(true))
		if err != nil {
			panic(err)
		}
		// An extent decodes to at most MaxBlocks blocks: a frame that
		// claims more is corrupt, never a reason to allocate.
		zdec, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderLowmem(true),
			zstd.WithDecoderMaxMemory(2*MaxBlocks*BlockSize), zstd.WithDecoderMaxWindow(MaxBlocks*BlockSize))
		if err != nil {
			panic(err)
		}
	})
	return zenc, zdec
}

func compress(alg uint8, dst, raw []byte) []byte {
	switch alg {
	case CompressZstd:
		enc, _ := zstdCodecs()
		return enc.EncodeAll(raw, dst[:0])
	case CompressLZ4:
		n := lz4.CompressBlockBound(len(raw))
		if cap(dst) < n {
			dst = make([]byte, n)
		}
		dst = dst[:n]
		var c lz4.Compressor
		k, err := c.CompressBlock(raw, dst)
		if err != nil || k == 0 {
			return dst[:0] // incompressible: store raw
		}
		return dst[:k]
	}
	return dst[:0]
}

func decompress(alg uint8, dst, src []byte) ([]byte, error) {
	switch alg {
	case CompressZstd:
		_, dec := zstdCodecs()
		return dec.DecodeAll(src, dst[:0])
	case CompressLZ4:
		k, err := lz4.UncompressBlock(src, dst[:cap(dst)])
		if err != nil {
			return nil, err
		}
		return dst[:k], nil
	}
	return nil, fmt.Errorf("compression algorithm %d", alg)
}

// ValidCompression reports whether alg is known.
func ValidCompression(alg uint8) bool { return alg <= CompressLZ4 }

// aadPrefix is the part of every extent's additional data that names the
// chunk: the volume name, a zero byte and the chunk id.
func aadPrefix(volume string, id uint64) []byte {
	return binary.LittleEndian.AppendUint64(append([]byte(volume), 0), id)
}

// extentAAD appends the rest of extent k's additional data (see the
// package doc) to dst, which holds aadPrefix.
func extentAAD(dst []byte, k int, flags uint16, entries []Entry) []byte {
	dst = binary.LittleEndian.AppendUint32(dst, uint32(k))
	dst = binary.LittleEndian.AppendUint16(dst, flags)
	for _, e := range entries {
		dst = binary.LittleEndian.AppendUint64(dst, e.Block)
		dst = binary.LittleEndian.AppendUint64(dst, e.Seq)
	}
	return dst
}

func subkey(key seal.Key, salt []byte, volume string, id uint64) cipher.AEAD {
	oid := binary.LittleEndian.AppendUint64(append([]byte(volume), 0), id)
	return seal.Subkey(key, salt, sealPurpose, oid)
}

// Finish2 completes the chunk in version 2 (see the package doc) and
// returns its encoding, which aliases the builder's buffers until the next
// Reset.
func (b *Builder) Finish2(volume string, id uint64, p Params) []byte {
	c := len(b.index)
	if c == 0 || c > MaxBlocks {
		panic(fmt.Sprintf("chunk: %d blocks", c))
	}
	eb := p.ExtentBlocks
	if eb <= 0 || eb > MaxBlocks {
		eb = ExtentBlocks
	}
	x := (c + eb - 1) / eb
	il := int(IndexLen2(c, eb))
	want := HeaderSize + il + c*BlockSize + x*seal.Overhead
	if cap(b.out) < want {
		b.out = make([]byte, 0, want)
	}
	out := b.out[:HeaderSize+il]
	clear(out)
	var salt [SaltSize]byte
	var aead cipher.AEAD
	if p.Sealed {
		seal.Salt(salt[:])
		aead = subkey(p.Key, salt[:], volume, id)
		b.aad = append(b.aad[:0], aadPrefix(volume, id)...)
	}
	prefix := len(b.aad)
	data := b.buf[HeaderSize:]
	ext := make([]ExtentEntry, x)
	for k := range x {
		lo, hi := k*eb, min((k+1)*eb, c)
		raw := data[lo*BlockSize : hi*BlockSize]
		payload := raw
		var flags uint16
		if p.Compression != CompressNone {
			b.tmp = compress(p.Compression, b.tmp, raw)
			if len(b.tmp) > 0 && len(b.tmp) <= len(raw)-len(raw)/8 {
				payload, flags = b.tmp, extCompressed
			}
		}
		off := len(out)
		if aead != nil {
			b.aad = extentAAD(b.aad[:prefix], k, flags, b.index[lo:hi])
			b.nonce = seal.Nonce(1, uint64(k))
			out = aead.Seal(out, b.nonce[:], payload, b.aad)
		} else {
			out = append(out, payload...)
		}
		ext[k] = ExtentEntry{Off: int64(off), Len: uint32(len(out) - off), Flags: flags, CRC: crc(out[off:])}
		if aead == nil {
			ext[k].RawCRC = crc(raw)
		}
	}
	b.out = out
	le := binary.LittleEndian
	h := out[:HeaderSize]
	copy(h, Magic)
	le.PutUint16(h[8:], Version2)
	le.PutUint16(h[10:], uint16(len(volume)))
	le.PutUint32(h[12:], uint32(c))
	le.PutUint64(h[16:], id)
	le.PutUint32(h[24:], BlockSize)
	h[28] = p.Compression
	if p.Sealed {
		h[29] = FlagSealed
		le.PutUint64(h[32:], p.KeyID)
		copy(h[40:72], salt[:])
	}
	le.PutUint16(h[30:], uint16(eb))
	le.PutUint64(h[72:], uint64(len(out)))
	copy(h[headerFixed2:HeaderSize-4], volume)
	le.PutUint32(h[HeaderSize-4:], crc(h[:HeaderSize-4]))
	ib := out[HeaderSize:HeaderSize]
	for _, e := range b.index {
		ib = le.AppendUint64(ib, e.Block)
		ib = le.AppendUint64(ib, e.Seq)
	}
	for _, e := range ext {
		ib = le.AppendUint64(ib, uint64(e.Off))
		ib = le.AppendUint32(ib, e.Len)
		ib = le.AppendUint16(ib, e.Flags)
		ib = le.AppendUint16(ib, 0)
		ib = le.AppendUint32(ib, e.CRC)
		ib = le.AppendUint32(ib, e.RawCRC)
	}
	icrc := crc(ib)
	f := len(ib)
	ib = append(ib, FootMagic...)
	ib = le.AppendUint32(ib, uint32(c))
	ib = le.AppendUint32(ib, icrc)
	ib = le.AppendUint64(ib, id)
	ib = le.AppendUint32(ib, 0)
	ib = le.AppendUint32(ib, crc(ib[f:]))
	if len(ib) != il {
		panic("chunk: index length mismatch")
	}
	return out
}

func decodeHeader2(b []byte, h Header) (Header, error) {
	le := binary.LittleEndian
	n := int(le.Uint16(b[10:]))
	h.Compression = b[28]
	h.Sealed = b[29]&FlagSealed != 0
	h.ExtentBlocks = int(le.Uint16(b[30:]))
	h.KeyID = le.Uint64(b[32:])
	copy(h.Salt[:], b[40:72])
	h.Size = int64(le.Uint64(b[72:]))
	if b[29]&^FlagSealed != 0 || !ValidCompression(h.Compression) || h.ExtentBlocks < 1 || h.ExtentBlocks > MaxBlocks || h.Sealed != (h.KeyID != 0) {
		return h, fmt.Errorf("%w: version 2 header: flags %#x, compression %d, extent blocks %d, key %016x", ErrCorrupt, b[29], h.Compression, h.ExtentBlocks, h.KeyID)
	}
	if n > MaxNameLen || headerFixed2+n > HeaderSize-4 || h.Count < 1 || h.Count > MaxBlocks {
		return h, fmt.Errorf("%w: name length %d, block count %d", ErrCorrupt, n, h.Count)
	}
	if h.Size < HeaderSize+IndexLen2(h.Count, h.ExtentBlocks) {
		return h, fmt.Errorf("%w: chunk size %d", ErrCorrupt, h.Size)
	}
	h.Volume = string(b[headerFixed2 : headerFixed2+n])
	return h, nil
}

// DecodeIndex2 decodes and verifies a version 2 index and footer: b is the
// IndexLen2 bytes after the header h.
func DecodeIndex2(b []byte, h Header) (*Index, error) {
	c, e := h.Count, h.ExtentBlocks
	if int64(len(b)) != IndexLen2(c, e) {
		return nil, fmt.Errorf("%w: index is %d bytes, want %d", ErrCorrupt, len(b), IndexLen2(c, e))
	}
	le := binary.LittleEndian
	x := (c + e - 1) / e
	il := c*BlockEntry2 + x*ExtentEntry2
	f := b[il:]
	if string(f[:8]) != FootMagic {
		return nil, fmt.Errorf("%w: bad footer magic %q", ErrCorrupt, f[:8])
	}
	if got, want := le.Uint32(f[28:]), crc(f[:28]); got != want {
		return nil, fmt.Errorf("%w: footer CRC %08x, want %08x", ErrCorrupt, got, want)
	}
	if fc := int(le.Uint32(f[8:])); fc != c {
		return nil, fmt.Errorf("%w: footer says %d blocks, want %d", ErrCorrupt, fc, c)
	}
	if fid := le.Uint64(f[16:]); fid != h.ID {
		return nil, fmt.Errorf("%w: footer says chunk %016x, want %016x", ErrCorrupt, fid, h.ID)
	}
	if got, want := le.Uint32(f[12:]), crc(b[:il]); got != want {
		return nil, fmt.Errorf("%w: index CRC %08x, want %08x", ErrCorrupt, got, want)
	}
	ix := &Index{Header: h, Entries: make([]Entry, c), Extents: make([]ExtentEntry, x)}
	for i := range ix.Entries {
		p := b[i*BlockEntry2:]
		ix.Entries[i] = Entry{Block: le.Uint64(p), Seq: le.Uint64(p[8:])}
	}
	next := HeaderSize + int64(len(b))
	for k := range ix.Extents {
		p := b[c*BlockEntry2+k*ExtentEntry2:]
		ee := ExtentEntry{Off: int64(le.Uint64(p)), Len: le.Uint32(p[8:]), Flags: le.Uint16(p[12:]), CRC: le.Uint32(p[16:]), RawCRC: le.Uint32(p[20:])}
		n := min(e, c-k*e)
		maxLen := int64(n)*BlockSize + seal.Overhead
		if ee.Off != next || int64(ee.Len) > maxLen || ee.Len == 0 || ee.Flags&^extCompressed != 0 || (ee.Compressed() && h.Compression == CompressNone) {
			return nil, fmt.Errorf("%w: extent %d %+v", ErrCorrupt, k, ee)
		}
		next += int64(ee.Len)
		ix.Extents[k] = ee
	}
	if next != h.Size {
		return nil, fmt.Errorf("%w: extents end at %d, chunk is %d bytes", ErrCorrupt, next, h.Size)
	}
	return ix, nil
}

// ExtentOf returns the extent holding block slot i and the slot's place in
// it.
func (ix *Index) ExtentOf(i int) (k, at int) {
	e := ix.Header.ExtentBlocks
	return i / e, i % e
}

// ExtentSlots returns the first slot of extent k and its block count.
func (ix *Index) ExtentSlots(k int) (first, n int) {
	e := ix.Header.ExtentBlocks
	return k * e, min(e, ix.Header.Count-k*e)
}

// openScratch is what opening an extent needs besides its input and
// output, pooled so that a read allocates nothing per extent.
type openScratch struct {
	nonce [seal.NonceSize]byte
	aad   []byte
	buf   []byte // a compressed extent's payload, decrypted
}

var openScratches = sync.Pool{New: func() any { return &openScratch{aad: make([]byte, 0, 256)} }}

// Opener decodes a version 2 chunk's extents. It derives the chunk's
// subkey once: make one per chunk and keep it with the chunk's index.
type Opener struct {
	ix     *Index
	aead   cipher.AEAD
	prefix []byte // aadPrefix of the chunk
}

// NewOpener returns an opener for the chunk of index ix. A sealed chunk
// needs its data key.
func NewOpener(ix *Index, key *seal.Key) (*Opener, error) {
	o := &Opener{ix: ix}
	if ix.Header.Sealed {
		if key == nil {
			return nil, fmt.Errorf("%w: chunk %016x is sealed with key %016x, which the volume does not hold", ErrCorrupt, ix.Header.ID, ix.Header.KeyID)
		}
		o.aead = subkey(*key, ix.Header.Salt[:], ix.Header.Volume, ix.Header.ID)
		o.prefix = aadPrefix(ix.Header.Volume, ix.Header.ID)
	}
	return o, nil
}

// Extent verifies and decodes extent k from its stored bytes into dst,
// which must hold the extent's blocks, and returns the decoded bytes.
// tmp is scratch space (may be nil). Stored bytes that fail their checks
// or authentication yield ErrCorrupt.
func (o *Opener) Extent(k int, stored, dst []byte) ([]byte, error) {
	ee := o.ix.Extents[k]
	first, n := o.ix.ExtentSlots(k)
	want := n * BlockSize
	if len(stored) != int(ee.Len) || len(dst) < want {
		return nil, fmt.Errorf("%w: extent %d: %d stored bytes, want %d", ErrCorrupt, k, len(stored), ee.Len)
	}
	// A sealed extent's tag covers everything its stored CRC does (which
	// is there for checks without the key: VerifyStored).
	if o.aead == nil {
		if got := crc(stored); got != ee.CRC {
			return nil, fmt.Errorf("%w: chunk %016x extent %d: stored CRC %08x, want %08x", ErrCorrupt, o.ix.Header.ID, k, got, ee.CRC)
		}
	}
	payload := stored
	if o.aead != nil {
		// An uncompressed extent opens straight into dst; a compressed
		// one into pooled scratch, then decompresses into dst.
		s := openScratches.Get().(*openScratch)
		defer openScratches.Put(s)
		s.aad = extentAAD(append(s.aad[:0], o.prefix...), k, ee.Flags, o.ix.Entries[first:first+n])
		s.nonce = seal.Nonce(1, uint64(k))
		buf := dst[:0]
		if ee.Compressed() {
			if cap(s.buf) < len(stored) {
				s.buf = make([]byte, 0, max(len(stored), ExtentBlocks*BlockSize+seal.Overhead))
			}
			buf = s.buf[:0]
		}
		var err error
		payload, err = o.aead.Open(buf, s.nonce[:], stored, s.aad)
		if err != nil {
			return nil, fmt.Errorf("%w: chunk %016x extent %d fails authentication (%v)", ErrCorrupt, o.ix.Header.ID, k, seal.ErrAuth)
		}
	}
	out := dst[:want]
	if ee.Compressed() {
		d, err := decompress(o.ix.Header.Compression, dst[:0:want], payload)
		if err != nil || len(d) != want {
			return nil, fmt.Errorf("%w: chunk %016x extent %d does not decompress to %d bytes: %v", ErrCorrupt, o.ix.Header.ID, k, want, err)
		}
		out = d
	} else {
		if len(payload) != want {
			return nil, fmt.Errorf("%w: chunk %016x extent %d holds %d bytes, want %d", ErrCorrupt, o.ix.Header.ID, k, len(payload), want)
		}
		if &payload[0] != &out[0] {
			copy(out, payload)
		}
	}
	if o.aead == nil {
		if got := crc(out); got != ee.RawCRC {
			return nil, fmt.Errorf("%w: chunk %016x extent %d: data CRC %08x, want %08x", ErrCorrupt, o.ix.Header.ID, k, got, ee.RawCRC)
		}
	}
	return out, nil
}

// Decode2 verifies a whole version 2 chunk (every extent decoded and, when
// sealed, authenticated with key) and returns its index and decoded data.
func Decode2(b []byte, key *seal.Key) (*Index, []byte, error) {
	h, err := DecodeHeader(b)
	if err != nil {
		return nil, nil, err
	}
	if h.Version != Version2 {
		return nil, nil, fmt.Errorf("%w: version %d where 2 was expected", ErrVersion, h.Version)
	}
	if int64(len(b)) != h.Size {
		return nil, nil, fmt.Errorf("%w: chunk is %d bytes, header says %d", ErrCorrupt, len(b), h.Size)
	}
	ix, err := DecodeIndex2(b[HeaderSize:HeaderSize+IndexLen2(h.Count, h.ExtentBlocks)], h)
	if err != nil {
		return nil, nil, err
	}
	o, err := NewOpener(ix, key)
	if err != nil {
		return ix, nil, err
	}
	data := make([]byte, h.Count*BlockSize)
	for k, ee := range ix.Extents {
		first, n := ix.ExtentSlots(k)
		if _, err := o.Extent(k, b[ee.Off:ee.Off+int64(ee.Len)], data[first*BlockSize:(first+n)*BlockSize]); err != nil {
			return ix, nil, err
		}
	}
	return ix, data, nil
}

// VerifyStored checks every extent's stored CRC of a version 2 chunk
// without decoding: what can be verified without the data key.
func VerifyStored(b []byte, ix *Index) error {
	for k, ee := range ix.Extents {
		if ee.Off+int64(ee.Len) > int64(len(b)) {
			return fmt.Errorf("%w: extent %d past the end", ErrCorrupt, k)
		}
		if got := crc(b[ee.Off : ee.Off+int64(ee.Len)]); got != ee.CRC {
			return fmt.Errorf("%w: chunk %016x extent %d: stored CRC %08x, want %08x", ErrCorrupt, ix.Header.ID, k, got, ee.CRC)
		}
	}
	return nil
}
