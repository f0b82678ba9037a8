// Package rangeset is a set of uint64 values (block numbers) held as
// disjoint half-open ranges [start, end) in a B+ tree.
//
// Ranges that overlap or touch are merged as they are added, so a set never
// holds two ranges where one would do: a million adjacent one-value Adds
// make one range, and one Add of a huge range is one range. Removing values
// from inside a range splits it. With n the most ranges the set has held,
// Add, Remove and Contains take O(log n) time, plus O(log n) for each range
// that an Add or Remove swallows (a range is swallowed once, so this is
// O(log n) amortized); Ascend takes O(log n) to reach its first range, then
// O(1) amortized per range.
//
// The tree keeps up to 64 ranges in a leaf and up to 64 children in an
// inner node, each inner node with the exact first start of each child, so
// a lookup reads a few contiguous arrays rather than chasing a pointer per
// level of a binary tree. Full nodes split in two. Nodes that empty are
// removed, but nodes are never merged, so the height is set by the most
// ranges the set has held (every node but the root was at least half full
// when it was made).
//
// A Set is not safe for concurrent use; its zero value is an empty set.
package rangeset

import "sort"

// fanout is the most ranges in a leaf and children in an inner node.
const fanout = 64

// Set is a set of uint64 values. The zero value is an empty set.
type Set struct {
	root *node
	n    int // number of ranges
}

type span struct{ start, end uint64 } // [start, end), never empty

// A node is a leaf (kids == nil) holding ranges ordered by start, or an
// inner node whose keys[i] is the first start in kids[i]. No node but the
// root is ever empty, and an empty set has no root.
type node struct {
	rs   []span
	keys []uint64
	kids []*node
}

func (n *node) leaf() bool { return n.kids == nil }

// step is one inner node on the way down and the child taken.
type step struct {
	n *node
	i int
}

// Len returns the number of ranges in the set (not the number of values).
func (s *Set) Len() int { return s.n }

// Empty reports whether the set holds no value.
func (s *Set) Empty() bool { return s.n == 0 }

// Clear empties the set.
func (s *Set) Clear() { s.root, s.n = nil, 0 }

// Contains reports whether x is in the set.
func (s *Set) Contains(x uint64) bool {
	r := s.last(x)
	return r != nil && x < r.end
}

// Add adds the values [start, end) to the set. An empty range (end <=
// start) adds nothing.
func (s *Set) Add(start, end uint64) {
	if end <= start {
		return
	}
	// Fast path, one descent: both neighbours of the new range are in the
	// leaf where it belongs, and it is inside the one before, extends it
	// without reaching the one after, or touches neither.
	if s.root != nil {
		var buf [16]step
		leaf, path := s.descend(start, buf[:0])
		if j := upper2(leaf.rs, start); j > 0 && j < len(leaf.rs) {
			f, c := &leaf.rs[j-1], &leaf.rs[j]
			touchL, touchR := f.end >= start, c.start <= end
			switch {
			case touchL && f.end >= end:
				return
			case touchL && !touchR:
				f.end = end
				return
			case !touchL && !touchR:
				s.insertAt(leaf, path, j, span{start, end})
				return
			}
		}
	}
	// The range before (or at) start already reaching start: the new one
	// is inside it, or extends it up to a range it does not reach.
	if f := s.last(start); f != nil && f.end >= start {
		if f.end >= end {
			return
		}
		if c := s.first(f.start + 1); c == nil || c.start > end {
			f.end = end
			return
		}
	}
	// Otherwise absorb, one at a time, every range that overlaps or
	// touches [start, end], then insert the union.
	for {
		if f := s.last(start); f != nil && f.end >= start {
			start, end = f.start, max(end, f.end)
			s.delete(f.start)
			continue
		}
		if c := s.first(start); c != nil && c.start <= end {
			end = max(end, c.end)
			s.delete(c.start)
			continue
		}
		break
	}
	s.insert(span{start, end})
}

// Remove removes the values [start, end) from the set, splitting a range
// that holds values on both sides of it. An empty range removes nothing.
func (s *Set) Remove(start, end uint64) {
	if end <= start {
		return
	}
	if f := s.last(start); f != nil && f.end > start {
		fs, fe := f.start, f.end
		if fs == start {
			s.delete(fs)
		} else {
			f.end = start // its key stays
		}
		if fe > end {
			s.insert(span{end, fe})
			return
		}
	}
	for {
		c := s.first(start)
		if c == nil || c.start >= end {
			return
		}
		cs, ce := c.start, c.end
		s.delete(cs)
		if ce > end {
			s.insert(span{end, ce})
			return
		}
	}
}

// Ascend calls fn for each range that ends after from (the range holding
// from, then every later one), in increasing order, until fn returns false.
// fn must not modify the set.
func (s *Set) Ascend(from uint64, fn func(start, end uint64) bool) {
	if s.root != nil {
		ascend(s.root, from, fn)
	}
}

func ascend(n *node, from uint64, fn func(start, end uint64) bool) bool {
	if n.leaf() {
		// Ranges are disjoint and ordered by start, so by end too.
		for j := sort.Search(len(n.rs), func(k int) bool { return n.rs[k].end > from }); j < len(n.rs); j++ {
			if !fn(n.rs[j].start, n.rs[j].end) {
				return false
			}
		}
		return true
	}
	// Children before the one holding from's floor end before from.
	for i := max(0, upper(n.keys, from)-1); i < len(n.kids); i++ {
		if !ascend(n.kids[i], from, fn) {
			return false
		}
	}
	return true
}

// upper returns the number of keys <= x.
func upper(keys []uint64, x uint64) int {
	return sort.Search(len(keys), func(k int) bool { return keys[k] > x })
}

// descend walks from the root to the leaf where x belongs (the one holding
// the last range starting at or before x, if any), appending the inner
// nodes and children taken to path.
func (s *Set) descend(x uint64, path []step) (*node, []step) {
	n := s.root
	for !n.leaf() {
		i := max(0, upper(n.keys, x)-1)
		path = append(path, step{n, i})
		n = n.kids[i]
	}
	return n, path
}

// last returns the range starting last at or before x, or nil. The pointer
// is valid until the set changes; changing its end (not its start) in
// place keeps the tree valid.
func (s *Set) last(x uint64) *span {
	if s.root == nil {
		return nil
	}
	// Keys are exact, so the leaf reached holds a start <= x unless every
	// start is greater than x.
	var buf [16]step
	leaf, _ := s.descend(x, buf[:0])
	if j := upper2(leaf.rs, x) - 1; j >= 0 {
		return &leaf.rs[j]
	}
	return nil
}

// first returns the range starting first at or after x, or nil (valid as
// last's).
func (s *Set) first(x uint64) *span {
	if s.root == nil {
		return nil
	}
	var buf [16]step
	leaf, p := s.descend(x, buf[:0])
	if j := sort.Search(len(leaf.rs), func(k int) bool { return leaf.rs[k].start >= x }); j < len(leaf.rs) {
		return &leaf.rs[j]
	}
	// The first range of the next leaf.
	for d := len(p) - 1; d >= 0; d-- {
		if st := p[d]; st.i+1 < len(st.n.kids) {
			n := st.n.kids[st.i+1]
			for !n.leaf() {
				n = n.kids[0]
			}
			return &n.rs[0]
		}
	}
	return nil
}

// upper2 returns the number of ranges in rs starting at or before x.
func upper2(rs []span, x uint64) int {
	return sort.Search(len(rs), func(k int) bool { return rs[k].start > x })
}

// insert adds r, which overlaps and touches no range of the set.
func (s *Set) insert(r span) {
	if s.root == nil {
		s.root = &node{rs: append(make([]span, 0, fanout+1), r)}
		s.n++
		return
	}
	var buf [16]step
	leaf, path := s.descend(r.start, buf[:0])
	s.insertAt(leaf, path, upper2(leaf.rs, r.start), r)
}

// insertAt inserts r at index j of leaf, the leaf descend found for it at
// the end of path.
func (s *Set) insertAt(leaf *node, path []step, j int, r span) {
	s.n++
	leaf.rs = append(leaf.rs, span{})
	copy(leaf.rs[j+1:], leaf.rs[j:])
	leaf.rs[j] = r
	if j == 0 {
		setFirst(path, r.start)
	}
	// Split full nodes, bottom up.
	n := leaf
	for d := len(path) - 1; ; d-- {
		var right *node
		var key uint64
		switch {
		case n.leaf() && len(n.rs) > fanout:
			h := len(n.rs) / 2
			right = &node{rs: append(make([]span, 0, fanout+1), n.rs[h:]...)}
			clear(n.rs[h:])
			n.rs = n.rs[:h]
			key = right.rs[0].start
		case !n.leaf() && len(n.kids) > fanout:
			h := len(n.kids) / 2
			right = &node{keys: append(make([]uint64, 0, fanout+1), n.keys[h:]...), kids: append(make([]*node, 0, fanout+1), n.kids[h:]...)}
			clear(n.kids[h:])
			n.keys, n.kids = n.keys[:h], n.kids[:h]
			key = right.keys[0]
		default:
			return
		}
		if d < 0 { // the root split: a new root above it
			s.root = &node{keys: append(make([]uint64, 0, fanout+1), firstKey(n), key), kids: append(make([]*node, 0, fanout+1), n, right)}
			return
		}
		p := path[d]
		p.n.keys = append(p.n.keys, 0)
		copy(p.n.keys[p.i+2:], p.n.keys[p.i+1:])
		p.n.keys[p.i+1] = key
		p.n.kids = append(p.n.kids, nil)
		copy(p.n.kids[p.i+2:], p.n.kids[p.i+1:])
		p.n.kids[p.i+1] = right
		n = p.n
	}
}

// delete removes the range starting at start, which must be in the set.
func (s *Set) delete(start uint64) {
	var buf [16]step
	leaf, path := s.descend(start, buf[:0])
	j := upper2(leaf.rs, start) - 1
	if j < 0 || leaf.rs[j].start != start {
		panic("rangeset: delete of a range not in the set")
	}
	s.n--
	leaf.rs = append(leaf.rs[:j], leaf.rs[j+1:]...)
	if len(leaf.rs) > 0 {
		if j == 0 {
			setFirst(path, leaf.rs[0].start)
		}
		return
	}
	// The leaf emptied: remove it, and every ancestor it leaves empty.
	for d := len(path) - 1; d >= 0; d-- {
		p := path[d]
		p.n.keys = append(p.n.keys[:p.i], p.n.keys[p.i+1:]...)
		p.n.kids = append(p.n.kids[:p.i], p.n.kids[p.i+1:]...)
		p.n.kids[:len(p.n.kids)+1][len(p.n.kids)] = nil // for the collector
		if len(p.n.kids) > 0 {
			if p.i == 0 {
				setFirst(path[:d], p.n.keys[0])
			}
			// A root left with one child gives way to it.
			for !s.root.leaf() && len(s.root.kids) == 1 {
				s.root = s.root.kids[0]
			}
			return
		}
	}
	s.root = nil
}

// setFirst records that the first start below the deepest step of path is
// now x, in every ancestor whose first child it is part of.
func setFirst(path []step, x uint64) {
	for d := len(path) - 1; d >= 0; d-- {
		path[d].n.keys[path[d].i] = x
		if path[d].i != 0 {
			return
		}
	}
}

func firstKey(n *node) uint64 {
	if n.leaf() {
		return n.rs[0].start
	}
	return n.keys[0]
}
