package rangeset

import (
	"fmt"
	"math"
	"math/rand"
	"strings"
	"testing"

	"github.com/viperblock/viperblock-csi/internal/testutil"
)

// ranges lists the set's ranges in order, as "[s,e)" strings.
func ranges(s *Set) string {
	var b strings.Builder
	s.Ascend(0, func(start, end uint64) bool {
		fmt.Fprintf(&b, "[%d,%d)", start, end)
		return true
	})
	return b.String()
}

// check verifies the tree's invariants: ranges non-empty, ordered,
// disjoint and not touching; priorities in heap order; Len right.
func check(t *testing.T, s *Set) {
	t.Helper()
	n := 0
	var prevEnd uint64
	var walk func(x *node, parentPrio uint64)
	walk = func(x *node, parentPrio uint64) {
		if x == nil {
			return
		}
		if x.prio > parentPrio {
			t.Fatalf("heap order broken at [%d,%d)", x.start, x.end)
		}
		walk(x.left, x.prio)
		if x.end <= x.start {
			t.Fatalf("empty range [%d,%d)", x.start, x.end)
		}
		if n > 0 && x.start <= prevEnd {
			t.Fatalf("range [%d,%d) overlaps or touches the previous one (ending at %d): %s", x.start, x.end, prevEnd, ranges(s))
		}
		prevEnd = x.end
		n++
		walk(x.right, x.prio)
	}
	walk(s.root, math.MaxUint64)
	if n != s.Len() {
		t.Fatalf("Len %d, tree holds %d ranges", s.Len(), n)
	}
	if s.Empty() != (n == 0) {
		t.Fatalf("Empty %v with %d ranges", s.Empty(), n)
	}
}

func TestAddMerges(t *testing.T) {
	var s Set
	for _, c := range []struct {
		add        [2]uint64
		remove     bool
		want       string
		wantRanges int
	}{
		{[2]uint64{10, 20}, false, "[10,20)", 1},
		{[2]uint64{30, 40}, false, "[10,20)[30,40)", 2},
		{[2]uint64{20, 30}, false, "[10,40)", 1}, // touches both: one range
		{[2]uint64{5, 5}, false, "[10,40)", 1},   // empty
		{[2]uint64{0, 5}, false, "[0,5)[10,40)", 2},
		{[2]uint64{5, 10}, false, "[0,40)", 1},
		{[2]uint64{12, 13}, true, "[0,12)[13,40)", 2}, // split
		{[2]uint64{0, 12}, true, "[13,40)", 1},
		{[2]uint64{39, 100}, true, "[13,39)", 1},
		{[2]uint64{50, 60}, false, "[13,39)[50,60)", 2},
		{[2]uint64{70, 80}, false, "[13,39)[50,60)[70,80)", 3},
		{[2]uint64{14, 75}, true, "[13,14)[75,80)", 2}, // swallows one, cuts two
		{[2]uint64{0, 1000}, false, "[0,1000)", 1},
		{[2]uint64{0, 1000}, true, "", 0},
	} {
		if c.remove {
			s.Remove(c.add[0], c.add[1])
		} else {
			s.Add(c.add[0], c.add[1])
		}
		check(t, &s)
		if got := ranges(&s); got != c.want || s.Len() != c.wantRanges {
			t.Fatalf("after %v (remove %v): %s (%d ranges), want %s", c.add, c.remove, got, s.Len(), c.want)
		}
	}
}

func TestExtremes(t *testing.T) {
	var s Set
	s.Add(math.MaxUint64-1, math.MaxUint64)
	s.Add(0, 1)
	check(t, &s)
	if !s.Contains(math.MaxUint64-1) || s.Contains(math.MaxUint64) || !s.Contains(0) || s.Contains(1) {
		t.Fatalf("extremes: %s", ranges(&s))
	}
	s.Add(1, math.MaxUint64)
	check(t, &s)
	if got := ranges(&s); got != fmt.Sprintf("[0,%d)", uint64(math.MaxUint64)) {
		t.Fatalf("whole space: %s", got)
	}
	s.Remove(5, math.MaxUint64)
	check(t, &s)
	if got := ranges(&s); got != "[0,5)" {
		t.Fatalf("after removing the top: %s", got)
	}
}

func TestAscendFrom(t *testing.T) {
	var s Set
	for i := uint64(0); i < 100; i++ {
		s.Add(i*10, i*10+5)
	}
	var got []uint64
	s.Ascend(336, func(start, end uint64) bool {
		got = append(got, start)
		return len(got) < 3
	})
	if fmt.Sprint(got) != "[340 350 360]" {
		t.Fatalf("Ascend(336): %v", got)
	}
	got = got[:0]
	s.Ascend(342, func(start, end uint64) bool {
		got = append(got, start)
		return len(got) < 2
	})
	if fmt.Sprint(got) != "[340 350]" {
		t.Fatalf("Ascend(342) (inside a range): %v", got)
	}
}

// TestModel applies random Adds and Removes to a Set and to a plain bitmap,
// comparing membership of every value, the ranges Ascend reports and the
// tree's invariants after each operation.
func TestModel(t *testing.T) {
	sd := int64(testutil.Seed(t))
	rng := rand.New(rand.NewSource(sd))
	for round := 0; round < 40; round++ {
		universe := 1 + rng.Intn(600)
		var s Set
		bits := make([]bool, universe+2)
		var log []string
		for op := 0; op < 300; op++ {
			a := uint64(rng.Intn(universe + 1))
			// Mostly short ranges (as single-block discards are), some
			// long ones.
			n := uint64(rng.Intn(4))
			if rng.Intn(8) == 0 {
				n = uint64(rng.Intn(universe + 1))
			}
			b := min(a+n, uint64(universe))
			if rng.Intn(3) == 0 {
				s.Remove(a, b)
				log = append(log, fmt.Sprintf("remove [%d,%d)", a, b))
				for x := a; x < b; x++ {
					bits[x] = false
				}
			} else {
				s.Add(a, b)
				log = append(log, fmt.Sprintf("add [%d,%d)", a, b))
				for x := a; x < b; x++ {
					bits[x] = true
				}
			}
			check(t, &s)
			var want strings.Builder
			for x := 0; x < len(bits); {
				if !bits[x] {
					x++
					continue
				}
				y := x
				for y < len(bits) && bits[y] {
					y++
				}
				fmt.Fprintf(&want, "[%d,%d)", x, y)
				x = y
			}
			if got := ranges(&s); got != want.String() {
				t.Fatalf("seed %d: after %s:\n got %s\nwant %s", sd, strings.Join(log, ", "), got, want.String())
			}
			for x := range bits {
				if s.Contains(uint64(x)) != bits[x] {
					t.Fatalf("seed %d: Contains(%d) = %v after %s", sd, x, !bits[x], strings.Join(log, ", "))
				}
			}
			from := uint64(rng.Intn(len(bits)))
			first := ""
			s.Ascend(from, func(start, end uint64) bool {
				first = fmt.Sprintf("[%d,%d)", start, end)
				return false
			})
			wantFirst := ""
			for x := int(from); x < len(bits); x++ {
				if bits[x] {
					y, z := x, x
					for y > 0 && bits[y-1] {
						y--
					}
					for z < len(bits) && bits[z] {
						z++
					}
					wantFirst = fmt.Sprintf("[%d,%d)", y, z)
					break
				}
			}
			if first != wantFirst {
				t.Fatalf("seed %d: Ascend(%d) starts at %q, want %q", sd, from, first, wantFirst)
			}
		}
	}
}

// TestDepthLogarithmic adds 2^18 one-value ranges in increasing order
// (the worst case of an unbalanced tree), every other value so that none
// merge, and checks that the tree stays shallow; then fills the gaps in a
// random order and expects one range.
func TestDepthLogarithmic(t *testing.T) {
	const n = 1 << 18
	var s Set
	for i := uint64(0); i < n; i++ {
		s.Add(2*i, 2*i+1)
	}
	if s.Len() != n {
		t.Fatalf("%d ranges, want %d", s.Len(), n)
	}
	var depth func(x *node) int
	depth = func(x *node) int {
		if x == nil {
			return 0
		}
		return 1 + max(depth(x.left), depth(x.right))
	}
	// A treap's expected depth is about 2 ln n (25 here); 80 would be
	// astronomically unlikely for random priorities.
	if d := depth(s.root); d > 80 {
		t.Fatalf("depth %d for %d ranges", d, n)
	}
	for _, i := range rand.New(rand.NewSource(1)).Perm(n) {
		s.Add(2*uint64(i)+1, 2*uint64(i)+2)
	}
	check(t, &s)
	if got := ranges(&s); got != fmt.Sprintf("[0,%d)", 2*n) {
		t.Fatalf("after filling the gaps: %s", got)
	}
}

func BenchmarkAddRandom(b *testing.B) {
	rng := rand.New(rand.NewSource(1))
	var s Set
	for i := 0; i < b.N; i++ {
		x := uint64(rng.Int63n(1 << 30))
		s.Add(x, x+1)
	}
}

func BenchmarkContains(b *testing.B) {
	rng := rand.New(rand.NewSource(1))
	var s Set
	for i := 0; i < 1<<20; i++ {
		x := uint64(rng.Int63n(1 << 30))
		s.Add(x, x+1)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s.Contains(uint64(rng.Int63n(1 << 30)))
	}
}
