// Package blockmap is the volume's extent map: which chunk holds each block
// that has been drained to the backend. A run of consecutive blocks stored
// consecutively in one chunk is one extent, so a 10-block sequential write is
// one entry. Blocks in no extent read as zeros.
//
// A Map is immutable: Overlay returns a new Map, so readers use a Map without
// locks while a drain builds the next one.
package blockmap

import (
	"fmt"
	"sort"
	"strings"
)

// Extent maps Count blocks starting at Start to consecutive blocks of a
// chunk, starting at block index Off within the chunk. The chunk is named by
// Vol, an index into the volume's table of volumes (0: the volume itself; a
// clone's map also points into its ancestors' chunks), and Chunk, the chunk
// id within that volume. Chunk 0 means "no data" (used only in Overlay
// operations, never stored).
type Extent struct {
	Start uint64
	Count uint32
	Vol   uint32
	Chunk uint64
	Off   uint32
}

// ChunkRef names one chunk: a volume-table index and a chunk id.
type ChunkRef struct {
	Vol uint32
	ID  uint64
}

// Ref returns the extent's chunk.
func (e Extent) Ref() ChunkRef { return ChunkRef{e.Vol, e.Chunk} }

// End is one past the last block.
func (e Extent) End() uint64 { return e.Start + uint64(e.Count) }

func (e Extent) String() string {
	if e.Chunk == 0 {
		return fmt.Sprintf("[%d+%d]=zero", e.Start, e.Count)
	}
	if e.Vol != 0 {
		return fmt.Sprintf("[%d+%d]=v%d:%x@%d", e.Start, e.Count, e.Vol, e.Chunk, e.Off)
	}
	return fmt.Sprintf("[%d+%d]=%x@%d", e.Start, e.Count, e.Chunk, e.Off)
}

// Map is a sorted, non-overlapping, immutable list of extents.
type Map struct {
	ext []Extent
}

// New returns a map of the given extents, which must be sorted and
// non-overlapping (as Validate checks).
func New(ext []Extent) *Map { return &Map{ext: ext} }

// Validate checks that extents are sorted, non-overlapping, non-empty and
// reference a chunk, and lie below maxBlock.
func Validate(ext []Extent, maxBlock uint64) error {
	var prevEnd uint64
	for i, e := range ext {
		switch {
		case e.Count == 0 || e.Chunk == 0:
			return fmt.Errorf("extent %d %v is empty or has no chunk", i, e)
		case i > 0 && e.Start < prevEnd:
			return fmt.Errorf("extent %d %v overlaps or is out of order", i, e)
		case e.End() > maxBlock || e.End() < e.Start:
			return fmt.Errorf("extent %d %v lies past block %d", i, e, maxBlock)
		}
		prevEnd = e.End()
	}
	return nil
}

// Extents returns the map's extents; the caller must not modify them.
func (m *Map) Extents() []Extent {
	if m == nil {
		return nil
	}
	return m.ext
}

// Len is the number of extents.
func (m *Map) Len() int {
	if m == nil {
		return 0
	}
	return len(m.ext)
}

// Blocks is the number of mapped blocks.
func (m *Map) Blocks() uint64 {
	var n uint64
	for _, e := range m.Extents() {
		n += uint64(e.Count)
	}
	return n
}

// Lookup returns the chunk and index within it that hold block b.
func (m *Map) Lookup(b uint64) (ref ChunkRef, off uint32, ok bool) {
	ext := m.Extents()
	i := sort.Search(len(ext), func(i int) bool { return ext[i].End() > b })
	if i == len(ext) || ext[i].Start > b {
		return ChunkRef{}, 0, false
	}
	e := ext[i]
	return e.Ref(), e.Off + uint32(b-e.Start), true
}

// Range calls fn for each extent overlapping [start, start+count), clipped
// to the range, in order.
func (m *Map) Range(start, count uint64, fn func(Extent)) {
	ext := m.Extents()
	end := start + count
	i := sort.Search(len(ext), func(i int) bool { return ext[i].End() > start })
	for ; i < len(ext) && ext[i].Start < end; i++ {
		e := ext[i]
		if e.Start < start {
			d := start - e.Start
			e.Start, e.Count, e.Off = start, e.Count-uint32(d), e.Off+uint32(d)
		}
		if e.End() > end {
			e.Count = uint32(end - e.Start)
		}
		fn(e)
	}
}

// Overlay returns a new map: m with each op applied in turn. ops must be
// sorted by Start and non-overlapping. An op with Chunk 0 clears its range;
// any other op maps its range.
func (m *Map) Overlay(ops []Extent) *Map {
	base := m.Extents()
	out := make([]Extent, 0, len(base)+len(ops))
	i := 0
	var cur Extent
	have := false
	next := func() bool {
		if !have && i < len(base) {
			cur, have = base[i], true
			i++
		}
		return have
	}
	for _, op := range ops {
		opEnd := op.End()
		for next() {
			if cur.End() <= op.Start {
				out = appendMerge(out, cur)
				have = false
				continue
			}
			if cur.Start >= opEnd {
				break
			}
			if cur.Start < op.Start {
				out = appendMerge(out, Extent{cur.Start, uint32(op.Start - cur.Start), cur.Vol, cur.Chunk, cur.Off})
			}
			if cur.End() > opEnd {
				d := opEnd - cur.Start
				cur = Extent{opEnd, cur.Count - uint32(d), cur.Vol, cur.Chunk, cur.Off + uint32(d)}
				break
			}
			have = false
		}
		if op.Chunk != 0 && op.Count > 0 {
			out = appendMerge(out, op)
		}
	}
	for next() {
		out = appendMerge(out, cur)
		have = false
	}
	return &Map{ext: out}
}

func appendMerge(out []Extent, e Extent) []Extent {
	if n := len(out); n > 0 {
		l := &out[n-1]
		if l.End() == e.Start && l.Vol == e.Vol && l.Chunk == e.Chunk && l.Off+l.Count == e.Off {
			l.Count += e.Count
			return out
		}
	}
	return append(out, e)
}

// Truncate returns a map without blocks at or past maxBlock.
func (m *Map) Truncate(maxBlock uint64) *Map {
	var out []Extent
	m.Range(0, maxBlock, func(e Extent) { out = append(out, e) })
	return &Map{ext: out}
}

// LiveBlocks counts, per chunk, the blocks the map references.
func (m *Map) LiveBlocks() map[ChunkRef]uint32 {
	live := map[ChunkRef]uint32{}
	for _, e := range m.Extents() {
		live[e.Ref()] += e.Count
	}
	return live
}

// String renders the map one extent per line, for tests and debugging.
func (m *Map) String() string {
	var sb strings.Builder
	for _, e := range m.Extents() {
		sb.WriteString(e.String())
		sb.WriteByte('\n')
	}
	return sb.String()
}
