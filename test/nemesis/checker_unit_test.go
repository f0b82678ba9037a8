package nemesis

import (
	"bytes"
	"errors"
	"slices"
	"testing"
	"time"
)

// The checker against hand-made histories: each case is either a history a
// correct system may produce (no violation) or one that breaks exactly one
// invariant, so a broken build cannot slip past the checker unnoticed.
// These run without servers, also under -short.

// hb builds a record.
type hb struct {
	rec    *record
	nextID uint64
}

func newHB(durability string, leases bool) *hb {
	return &hb{rec: &record{tag: 1, durability: durability, leases: leases, lease: 3 * time.Second, blocks: 8,
		final: make([]uint64, 8), finalBad: make([]string, 8), partitions: make([][]interval, numNodes)}}
}

func sec(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// tenure adds a tenure of node ended by end.
func (h *hb) tenure(node int, end tenureEnd, ownerHealthy bool) int {
	t := &tenure{id: len(h.rec.tenures), node: node, end: end, ownerHealthy: ownerHealthy}
	h.rec.tenures = append(h.rec.tenures, t)
	return t.id
}

// inc adds an incarnation of node in tenure t, alive over [launch, exit].
func (h *hb) inc(node, t int, launch, exit float64) int {
	i := &incarnation{id: len(h.rec.incs), node: node, tenure: t, launch: sec(launch), ready: sec(launch), exit: sec(exit)}
	h.rec.incs = append(h.rec.incs, i)
	h.rec.tenures[t].incs = append(h.rec.tenures[t].incs, i.id)
	return i.id
}

func (h *hb) pause(inc int, from, to float64) {
	h.rec.incs[inc].pauses = append(h.rec.incs[inc].pauses, interval{sec(from), sec(to)})
}

func (h *hb) write(inc, block int, start, end float64, ok bool) uint64 {
	h.nextID++
	h.rec.ops = append(h.rec.ops, op{kind: opWrite, node: h.rec.incs[inc].node, inc: inc, block: block,
		start: sec(start), end: sec(end), ok: ok, id: h.nextID})
	return h.nextID
}

func (h *hb) flush(inc int, start, end float64, ok bool) {
	h.rec.ops = append(h.rec.ops, op{kind: opFlush, node: h.rec.incs[inc].node, inc: inc, block: -1,
		start: sec(start), end: sec(end), ok: ok})
}

// wf is a write and its flush, both confirmed, 10 ms each.
func (h *hb) wf(inc, block int, at float64) uint64 {
	id := h.write(inc, block, at, at+0.01, true)
	h.flush(inc, at+0.01, at+0.02, true)
	return id
}

func (h *hb) read(inc, block int, at float64, id uint64, bad string) {
	h.rec.ops = append(h.rec.ops, op{kind: opRead, node: h.rec.incs[inc].node, inc: inc, block: block,
		start: sec(at), end: sec(at + 0.01), ok: true, id: id, bad: bad})
}

func TestChecker(t *testing.T) {
	for _, c := range []struct {
		name  string
		build func(h *hb)
		store bool
		lease bool
		want  []string // invariants violated, in check's order; nil: none
	}{
		{name: "clean move", build: func(h *hb) {
			t0, t1 := h.tenure(0, endClean, false), h.tenure(1, endClean, false)
			a, b := h.inc(0, t0, 0, 2), h.inc(1, t1, 2.1, 5)
			w1 := h.wf(a, 0, 1)
			h.wf(a, 1, 1.5)
			w3 := h.wf(b, 1, 3)
			h.read(b, 0, 4, w1, "")
			h.rec.final[0], h.rec.final[1] = w1, w3
		}},
		{name: "two nodes flush at the same time", want: []string{"1"}, build: func(h *hb) {
			t0, t1 := h.tenure(0, endTakeover, true), h.tenure(1, endClean, false)
			a, b := h.inc(0, t0, 0, 5), h.inc(1, t1, 2, 5)
			h.write(a, 0, 2.9, 2.95, true)
			h.flush(a, 3.0, 3.2, true)
			w := h.write(b, 1, 2.9, 2.95, true)
			h.flush(b, 3.1, 3.3, true)
			h.rec.final[1] = w
		}},
		{name: "stale owner flushes after the new owner did", want: []string{"1"}, build: func(h *hb) {
			t0, t1 := h.tenure(0, endTakeover, true), h.tenure(1, endClean, false)
			a, b := h.inc(0, t0, 0, 9), h.inc(1, t1, 2, 9)
			h.wf(a, 0, 1)
			h.rec.final[1] = h.wf(b, 1, 3)
			h.wf(a, 2, 4) // disjoint from b's flush, but after it
		}},
		{name: "flush held by its server's pause ends at the pause", lease: true, build: func(h *hb) {
			t0, t1 := h.tenure(0, endTakeover, false), h.tenure(1, endClean, false)
			a, b := h.inc(0, t0, 0, 12), h.inc(1, t1, 4, 12)
			h.wf(a, 0, 0.5)
			h.write(a, 1, 0.9, 0.95, true)
			h.pause(a, 1.005, 10)
			h.flush(a, 1.0, 10.01, true) // decided before the pause, answered after
			h.rec.final[2] = h.wf(b, 2, 8)
			h.rec.final[0] = 1
		}},
		{name: "flush started after the resume is not excused", lease: true, want: []string{"1"}, build: func(h *hb) {
			t0, t1 := h.tenure(0, endTakeover, false), h.tenure(1, endClean, false)
			a, b := h.inc(0, t0, 0, 12), h.inc(1, t1, 4, 12)
			h.pause(a, 1, 10)
			h.rec.final[2] = h.wf(b, 2, 8)
			h.wf(a, 0, 10.5) // the stale server did not re-validate
		}},
		{name: "read of a torn block", want: []string{"2"}, build: func(h *hb) {
			t0 := h.tenure(0, endClean, false)
			a := h.inc(0, t0, 0, 5)
			h.read(a, 3, 1, 0, errTorn.Error())
		}},
		{name: "read of a write never issued", want: []string{"2"}, build: func(h *hb) {
			t0 := h.tenure(0, endClean, false)
			a := h.inc(0, t0, 0, 5)
			h.read(a, 3, 1, 99, "")
		}},
		{name: "read of a write issued only later", want: []string{"2"}, build: func(h *hb) {
			t0 := h.tenure(0, endClean, false)
			a := h.inc(0, t0, 0, 5)
			h.read(a, 3, 1, 1, "")
			w := h.wf(a, 3, 2)
			h.rec.final[3] = w
		}},
		{name: "final block misplaced", want: []string{"2"}, build: func(h *hb) {
			t0 := h.tenure(0, endClean, false)
			a := h.inc(0, t0, 0, 5)
			h.wf(a, 3, 1)
			h.rec.final[3] = 1
			h.rec.final[4] = 1 // write #1 went to block 3
		}},
		{name: "store: flushed write lost", store: true, want: []string{"3"}, build: func(h *hb) {
			t0 := h.tenure(0, endLost, false)
			a := h.inc(0, t0, 0, 5)
			h.wf(a, 0, 1)
		}},
		{name: "store: flushed write replaced by an older one", store: true, want: []string{"3"}, build: func(h *hb) {
			t0 := h.tenure(0, endClean, false)
			a := h.inc(0, t0, 0, 5)
			w1 := h.wf(a, 0, 1)
			h.wf(a, 0, 2)
			h.rec.final[0] = w1
		}},
		{name: "store: flushed write overwritten by a later unconfirmed one", store: true, build: func(h *hb) {
			t0, t1 := h.tenure(0, endLost, false), h.tenure(1, endClean, false)
			a, b := h.inc(0, t0, 0, 5), h.inc(1, t1, 5, 9)
			h.wf(a, 0, 1)
			w := h.write(b, 0, 6, 6.1, false) // applied, reply lost
			h.rec.final[0] = w
		}},
		{name: "store: two writes to a block, then one flush covering both", store: true, build: func(h *hb) {
			t0 := h.tenure(0, endClean, false)
			a := h.inc(0, t0, 0, 5)
			h.write(a, 0, 1, 1.01, true)
			w2 := h.write(a, 0, 2, 2.01, true)
			h.flush(a, 3, 3.01, true)
			h.rec.final[0] = w2
		}},
		{name: "store: two writes, one flush, the first survives", store: true, want: []string{"3"}, build: func(h *hb) {
			t0 := h.tenure(0, endClean, false)
			a := h.inc(0, t0, 0, 5)
			w1 := h.write(a, 0, 1, 1.01, true)
			h.write(a, 0, 2, 2.01, true)
			h.flush(a, 3, 3.01, true)
			h.rec.final[0] = w1
		}},
		{name: "node: crash and restart keeps flushed writes", build: func(h *hb) {
			t0 := h.tenure(0, endClean, false)
			a, a2 := h.inc(0, t0, 0, 2), h.inc(0, t0, 2.1, 5)
			w1 := h.wf(a, 0, 1)
			h.write(a, 1, 1.9, 1.95, true) // never flushed: may die with the process
			h.rec.final[0] = w1
			_ = a2
		}},
		{name: "node: crash and restart loses a flushed write", want: []string{"4"}, build: func(h *hb) {
			t0 := h.tenure(0, endClean, false)
			a := h.inc(0, t0, 0, 2)
			h.inc(0, t0, 2.1, 5)
			h.wf(a, 0, 1)
		}},
		{name: "node: forced takeover without leases loses a suffix", build: func(h *hb) {
			t0, t1 := h.tenure(0, endTakeover, true), h.tenure(1, endClean, false)
			a, b := h.inc(0, t0, 0, 9), h.inc(1, t1, 5, 9)
			w1 := h.wf(a, 0, 1)
			h.wf(a, 1, 2) // after a's last commit: lost
			h.wf(a, 2, 3)
			w4 := h.wf(b, 3, 6)
			h.rec.final[0], h.rec.final[3] = w1, w4
		}},
		{name: "node: forced takeover loses a write before one that survived", want: []string{"4"}, build: func(h *hb) {
			t0, t1 := h.tenure(0, endTakeover, true), h.tenure(1, endClean, false)
			a, _ := h.inc(0, t0, 0, 9), h.inc(1, t1, 5, 9)
			h.wf(a, 0, 1) // lost
			w2 := h.wf(a, 1, 2)
			h.rec.final[1] = w2
		}},
		{name: "node: cooperative handoff under leases loses a flushed write", lease: true, want: []string{"4"}, build: func(h *hb) {
			t0, t1 := h.tenure(0, endTakeover, true), h.tenure(1, endClean, false)
			a, _ := h.inc(0, t0, 0, 9), h.inc(1, t1, 5, 9)
			h.wf(a, 0, 1)
		}},
		{name: "node: a lease lapse excuses the loss", lease: true, build: func(h *hb) {
			t0, t1 := h.tenure(0, endTakeover, true), h.tenure(1, endClean, false)
			a, _ := h.inc(0, t0, 0, 9), h.inc(1, t1, 5, 9)
			h.rec.partitions[0] = []interval{{sec(2), sec(6)}}
			h.wf(a, 0, 1)
		}},
		{name: "liveness", want: []string{"5"}, build: func(h *hb) {
			h.rec.liveness = "two servers flush"
		}},
		{name: "unclean stop", want: []string{"stop"}, build: func(h *hb) {
			h.rec.stops = []string{"final stop: exit status 1"}
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := "node"
			if c.store {
				d = "store"
			}
			h := newHB(d, c.lease)
			c.build(h)
			var got []string
			vs := check(h.rec)
			for _, v := range vs {
				if !slices.Contains(got, v.inv) {
					got = append(got, v.inv)
				}
			}
			if !slices.Equal(got, c.want) {
				t.Errorf("violations of %v, want %v:", got, c.want)
				for _, v := range vs {
					t.Logf("  %s", v)
				}
			}
		})
	}
}

func TestValueRoundTrip(t *testing.T) {
	v := value{Tag: 7, ID: 42, Node: 2, Inc: 5, Block: 9}
	b := encodeValue(v)
	got, zero, err := decodeValue(b, 7, 9)
	if err != nil || zero || got != v {
		t.Fatalf("decode: %+v zero=%v err=%v", got, zero, err)
	}
	if _, zero, err := decodeValue(make([]byte, blockSize), 7, 9); !zero || err != nil {
		t.Errorf("zeros: zero=%v err=%v", zero, err)
	}
	if _, _, err := decodeValue(b, 8, 9); !errors.Is(err, errForeign) {
		t.Errorf("other tag: %v", err)
	}
	if _, _, err := decodeValue(b, 7, 10); !errors.Is(err, errMisplaced) {
		t.Errorf("other block: %v", err)
	}
	// Half of one write over half of another: torn.
	w := encodeValue(value{Tag: 7, ID: 43, Node: 1, Inc: 4, Block: 9})
	torn := append(bytes.Clone(b[:blockSize/2]), w[blockSize/2:]...)
	if _, _, err := decodeValue(torn, 7, 9); !errors.Is(err, errTorn) {
		t.Errorf("torn: %v", err)
	}
}
