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
// disjoint and not touching; every leaf at the same depth; no node empty
// or over full; each key the first start of its child; Len right.
func check(t *testing.T, s *Set) {
	t.Helper()
	n := 0
	var prevEnd uint64
	leafDepth := -1
	var walk func(x *node, depth int) uint64
	walk = func(x *node, depth int) uint64 {
		if x.leaf() {
			if leafDepth >= 0 && depth != leafDepth {
				t.Fatalf("leaves at depths %d and %d", leafDepth, depth)
			}
			leafDepth = depth
			if len(x.rs) == 0 || len(x.rs) > fanout {
				t.Fatalf("leaf with %d ranges", len(x.rs))
			}
			for _, r := range x.rs {
				if r.end <= r.start {
					t.Fatalf("empty range [%d,%d)", r.start, r.end)
				}
				if n > 0 && r.start <= prevEnd {
					t.Fatalf("range [%d,%d) overlaps or touches the previous one (ending at %d): %s", r.start, r.end, prevEnd, ranges(s))
				}
				prevEnd = r.end
				n++
			}
			return x.rs[0].start
		}
		if len(x.kids) == 0 || len(x.kids) > fanout || len(x.keys) != len(x.kids) {
			t.Fatalf("inner node with %d children, %d keys", len(x.kids), len(x.keys))
		}
		for i, k := range x.kids {
			if first := walk(k, depth+1); first != x.keys[i] {
				t.Fatalf("key %d is %d, its child starts at %d", i, x.keys[i], first)
			}
		}
		return x.keys[0]
	}
	if s.root != nil {
		walk(s.root, 0)
	}
	if n != s.Len() {
		t.Fatalf("Len %d, tree holds %d ranges", s.Len(), n)
	}
	if s.Empty() != (n == 0) || (s.root == nil) != (n == 0) {
		t.Fatalf("Empty %v, root %v, with %d ranges", s.Empty(), s.root != nil, n)
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
	for round := 0; round < 44; round++ {
		// Small sets, and a few large enough for trees of three levels
		// (over 2048 ranges) that wide Removes cut back down.
		universe, ops := 1+rng.Intn(600), 300
		if round >= 40 {
			universe, ops = 60000+rng.Intn(20000), 16000
		}
		var s Set
		bits := make([]bool, universe+2)
		var log []string
		maxDepth := 0
		for op := 0; op < ops; op++ {
			a := uint64(rng.Intn(universe + 1))
			// Mostly short ranges (as single-block discards are), some
			// long ones.
			n := uint64(rng.Intn(4))
			remove := rng.Intn(3) == 0 && (universe < 1000 || rng.Intn(2) == 0)
			if universe < 1000 && rng.Intn(8) == 0 || remove && rng.Intn(1000) == 0 {
				n = uint64(rng.Intn(universe + 1))
			}
			b := min(a+n, uint64(universe))
			if remove {
				s.Remove(a, b)
				log = append(log[max(0, len(log)-50):], fmt.Sprintf("remove [%d,%d)", a, b))
				for x := a; x < b; x++ {
					bits[x] = false
				}
			} else {
				s.Add(a, b)
				log = append(log[max(0, len(log)-50):], fmt.Sprintf("add [%d,%d)", a, b))
				for x := a; x < b; x++ {
					bits[x] = true
				}
			}
			depth := 0
			for x := s.root; x != nil && !x.leaf(); x = x.kids[0] {
				depth++
			}
			maxDepth = max(maxDepth, depth)
			// Large sets: the whole comparison every 197 operations, and
			// 64 values after each.
			if universe > 1000 && op%197 != 0 {
				for i := 0; i < 64; i++ {
					x := rng.Intn(len(bits))
					if s.Contains(uint64(x)) != bits[x] {
						t.Fatalf("seed %d: Contains(%d) = %v after %s", sd, x, !bits[x], strings.Join(log, ", "))
					}
				}
				continue
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
		if universe > 1000 && maxDepth < 2 {
			t.Fatalf("seed %d: the tree never grew to three levels (%d ranges at the end)", sd, s.Len())
		}
	}
}

// TestDepthLogarithmic adds 2^18 one-value ranges in increasing order, every
// other value so that none merge, and checks that the tree stays shallow;
// then fills the gaps in a random order and expects one range.
func TestDepthLogarithmic(t *testing.T) {
	const n = 1 << 18
	var s Set
	for i := uint64(0); i < n; i++ {
		s.Add(2*i, 2*i+1)
	}
	if s.Len() != n {
		t.Fatalf("%d ranges, want %d", s.Len(), n)
	}
	check(t, &s)
	depth := 0
	for x := s.root; !x.leaf(); x = x.kids[0] {
		depth++
	}
	// Nodes at least half full after a split: depth <= log32(n) + 1.
	if depth > 5 {
		t.Fatalf("depth %d for %d ranges", depth, n)
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
