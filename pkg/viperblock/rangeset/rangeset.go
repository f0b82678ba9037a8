// Package rangeset is a set of uint64 values (block numbers) held as
// disjoint half-open ranges [start, end) in a balanced search tree.
//
// Ranges that overlap or touch are merged as they are added, so a set never
// holds two ranges where one would do: a million adjacent one-value Adds
// make one range, and one Add of a huge range is one range. Removing values
// from inside a range splits it. Add, Remove and Contains take O(log n)
// expected time for a set of n ranges, plus O(1) amortized for each range
// that an Add or Remove swallows; Ascend takes O(log n) to reach its first
// range, then O(1) per range.
//
// The tree is a treap: a binary search tree ordered by range start whose
// nodes also carry random priorities kept in heap order, which makes its
// expected depth logarithmic whatever the order of operations. Its
// operations are built from two primitives, split (one tree into the ranges
// that start below a key and the rest) and join (two trees whose key ranges
// do not interleave into one).
//
// A Set is not safe for concurrent use; its zero value is an empty set.
package rangeset

import "math"

// Set is a set of uint64 values. The zero value is an empty set.
type Set struct {
	root *node
	n    int    // number of ranges
	rnd  uint64 // priority generator state
}

type node struct {
	start, end  uint64 // the range [start, end), never empty
	prio        uint64
	left, right *node
}

// Len returns the number of ranges in the set (not the number of values).
func (s *Set) Len() int { return s.n }

// Empty reports whether the set holds no value.
func (s *Set) Empty() bool { return s.root == nil }

// Clear empties the set.
func (s *Set) Clear() { s.root, s.n = nil, 0 }

// Contains reports whether x is in the set.
func (s *Set) Contains(x uint64) bool {
	var cand *node // the range with the greatest start <= x
	for t := s.root; t != nil; {
		if t.start <= x {
			cand, t = t, t.right
		} else {
			t = t.left
		}
	}
	return cand != nil && x < cand.end
}

// Add adds the values [start, end) to the set. An empty range (end <=
// start) adds nothing.
func (s *Set) Add(start, end uint64) {
	if end <= start {
		return
	}
	l, r := split(s.root, start)
	// The last range starting before start absorbs the new one if it
	// reaches it.
	if m := last(l); m != nil && m.end >= start {
		start, end = m.start, max(end, m.end)
		l, _ = split(l, m.start)
		s.n--
	}
	// Ranges starting inside [start, end] overlap or touch it: absorbed.
	var mid *node
	if end == math.MaxUint64 {
		mid, r = r, nil
	} else {
		mid, r = split(r, end+1)
	}
	if mid != nil {
		end = max(end, last(mid).end)
		s.n -= count(mid)
	}
	s.root = join(join(l, s.newNode(start, end)), r)
	s.n++
}

// Remove removes the values [start, end) from the set, splitting a range
// that holds values on both sides of it. An empty range removes nothing.
func (s *Set) Remove(start, end uint64) {
	if end <= start {
		return
	}
	l, r := split(s.root, start)
	if m := last(l); m != nil && m.end > start {
		// m starts before start and reaches into the removed range.
		if m.end > end {
			// It reaches past it too: no other range starts inside the
			// removed range, so the tail goes first in r.
			r = join(s.newNode(end, m.end), r)
			s.n++
		}
		m.end = start
	}
	mid, r := split(r, end)
	if mid != nil {
		if t := last(mid); t.end > end {
			r = join(s.newNode(end, t.end), r)
			s.n++
		}
		s.n -= count(mid)
	}
	s.root = join(l, r)
}

// Ascend calls fn for each range that ends after from (the range holding
// from, then every later one), in increasing order, until fn returns false.
// fn must not modify the set.
func (s *Set) Ascend(from uint64, fn func(start, end uint64) bool) {
	ascend(s.root, from, fn)
}

func ascend(t *node, from uint64, fn func(start, end uint64) bool) bool {
	for t != nil {
		// Ranges are disjoint and ordered by start, so by end too: if t
		// ends at or before from, so does its whole left subtree.
		if t.end > from {
			if !ascend(t.left, from, fn) || !fn(t.start, t.end) {
				return false
			}
		}
		t = t.right
	}
	return true
}

// newNode returns a node for [start, end) with the next random priority
// (splitmix64).
func (s *Set) newNode(start, end uint64) *node {
	s.rnd += 0x9e3779b97f4a7c15
	z := s.rnd
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return &node{start: start, end: end, prio: z ^ (z >> 31)}
}

// split divides t into the ranges that start below key and the others.
func split(t *node, key uint64) (l, r *node) {
	if t == nil {
		return nil, nil
	}
	if t.start < key {
		t.right, r = split(t.right, key)
		return t, r
	}
	l, t.left = split(t.left, key)
	return l, t
}

// join joins two trees, every range of l starting before every range of r.
func join(l, r *node) *node {
	switch {
	case l == nil:
		return r
	case r == nil:
		return l
	case l.prio > r.prio:
		l.right = join(l.right, r)
		return l
	default:
		r.left = join(l, r.left)
		return r
	}
}

// last returns the range of t that starts last.
func last(t *node) *node {
	if t == nil {
		return nil
	}
	for t.right != nil {
		t = t.right
	}
	return t
}

// count returns the number of ranges in t.
func count(t *node) int {
	if t == nil {
		return 0
	}
	return 1 + count(t.left) + count(t.right)
}
