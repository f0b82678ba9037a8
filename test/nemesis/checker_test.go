package nemesis

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// violation is one broken invariant.
type violation struct {
	inv string // "1".."5", or "stop"
	msg string
}

func (v violation) String() string {
	if v.inv == "stop" {
		return "clean stop: " + v.msg
	}
	return "invariant " + v.inv + ": " + v.msg
}

// check judges a schedule's record against the invariants (see the package
// doc) and returns every violation found, most important first.
func check(r *record) []violation {
	c := newChecker(r)
	var vs []violation
	vs = append(vs, c.exclusiveFlushes()...)
	vs = append(vs, c.readsDecode()...)
	vs = append(vs, c.durable()...)
	if r.liveness != "" {
		vs = append(vs, violation{"5", r.liveness})
	}
	for _, s := range r.stops {
		vs = append(vs, violation{"stop", s})
	}
	return vs
}

type checker struct {
	r       *record
	writes  map[uint64]*op // by write id
	byBlock [][]*op        // writes by block, by start
	flushes map[int][]*op  // confirmed flushes by incarnation, by start
}

func newChecker(r *record) *checker {
	c := &checker{r: r, writes: map[uint64]*op{}, byBlock: make([][]*op, r.blocks), flushes: map[int][]*op{}}
	for i := range r.ops {
		o := &r.ops[i]
		switch o.kind {
		case opWrite:
			c.writes[o.id] = o
			if o.block >= 0 && o.block < r.blocks {
				c.byBlock[o.block] = append(c.byBlock[o.block], o)
			}
		case opFlush:
			if o.ok {
				c.flushes[o.inc] = append(c.flushes[o.inc], o)
			}
		}
	}
	for _, ws := range c.byBlock {
		sort.Slice(ws, func(i, j int) bool { return ws[i].start < ws[j].start })
	}
	for _, fs := range c.flushes {
		sort.Slice(fs, func(i, j int) bool { return fs[i].start < fs[j].start })
	}
	return c
}

// effectiveEnd is when a confirmed flush is taken to have been decided: its
// end, or the first SIGSTOP of its own server that fell inside it. The
// server may have decided just before the pause and sent the reply only
// after it; the lease rules ask a server to re-validate any decision it
// makes after a pause, and flushes started after the resume still catch a
// server that does not.
func (c *checker) effectiveEnd(f *op) time.Duration {
	end := f.end
	if f.inc < len(c.r.incs) {
		for _, p := range c.r.incs[f.inc].pauses {
			if f.start < p.from && p.from < end {
				end = p.from
			}
		}
	}
	return end
}

// exclusiveFlushes checks invariant 1 in two forms.
//
// Overlap: each server incarnation's confirmed flushes span [first start,
// last effective end]; the spans of incarnations on different nodes must be
// disjoint. Two overlapping flushes of two nodes are the plainest case; a
// stale owner that confirms a flush after the new owner confirmed one is the
// other.
//
// Stale: once a server on another node has opened the volume (it serves),
// no older server may confirm a FLUSH it received afterwards: a flush that
// started after the newer server was ready. This needs no tight clock: the
// newer server's readiness is taken when the test saw it, after the fact.
func (c *checker) exclusiveFlushes() []violation {
	type span struct {
		inc         int
		node        int
		from, to    time.Duration
		first, last *op
	}
	var spans []span
	for inc, fs := range c.flushes {
		s := span{inc: inc, node: fs[0].node, from: fs[0].start, to: -1, first: fs[0]}
		for _, f := range fs {
			if e := c.effectiveEnd(f); e > s.to {
				s.to, s.last = e, f
			}
		}
		spans = append(spans, s)
	}
	sort.Slice(spans, func(i, j int) bool { return spans[i].from < spans[j].from })
	var vs []violation
	for i := range spans {
		for j := i + 1; j < len(spans); j++ {
			a, b := spans[i], spans[j] // a.from <= b.from
			if b.from >= a.to || a.node == b.node {
				continue
			}
			// a's server confirmed a flush (a.last) that ended after b's
			// server had started its first confirmed flush (b.first).
			vs = append(vs, violation{"1", fmt.Sprintf(
				"nodes %d and %d both confirmed flushes at once: node %d (inc %d) confirmed flushes from %s to %s (last: %s, decided by %s); node %d (inc %d) confirmed %s",
				a.node, b.node, a.node, a.inc, fmtT(a.from), fmtT(a.to), a.last, fmtT(c.effectiveEnd(a.last)),
				b.node, b.inc, b.first)})
		}
	}
	for inc, fs := range c.flushes {
		older := c.r.incs[inc]
		for _, newer := range c.r.incs {
			if newer.node == older.node || newer.tenure < 0 || newer.ready <= older.ready {
				continue
			}
			for _, f := range fs {
				if f.start > newer.ready {
					vs = append(vs, violation{"1", fmt.Sprintf(
						"stale server confirmed a flush: node %d (inc %d) confirmed %s, sent after node %d (inc %d) had opened the volume at %s",
						older.node, older.id, f, newer.node, newer.id, fmtT(newer.ready))})
					break
				}
			}
		}
	}
	return vs
}

// readsDecode checks invariant 2 for the reads clients made during the run
// and for the final state: every block is zeros or the value of a write
// that was issued (not necessarily acknowledged) before the read ended.
func (c *checker) readsDecode() []violation {
	var vs []violation
	for i := range c.r.ops {
		o := &c.r.ops[i]
		if o.kind != opRead || !o.ok {
			continue
		}
		if msg := c.valueProblem(o.block, o.id, o.bad, o.end); msg != "" {
			vs = append(vs, violation{"2", fmt.Sprintf("%s returned %s", o, msg)})
		}
	}
	for b := range c.r.final {
		if msg := c.valueProblem(b, c.r.final[b], c.r.finalBad[b], never); msg != "" {
			vs = append(vs, violation{"2", fmt.Sprintf("final state: block %d holds %s", b, msg)})
		}
	}
	return vs
}

// valueProblem says what is wrong with value id (or decode error bad) read
// from block b by a read that ended at end; "" if nothing.
func (c *checker) valueProblem(b int, id uint64, bad string, end time.Duration) string {
	if bad != "" {
		return bad
	}
	if id == 0 {
		return ""
	}
	w, ok := c.writes[id]
	switch {
	case !ok:
		return fmt.Sprintf("write #%d, which was never issued", id)
	case w.block != b:
		return fmt.Sprintf("write #%d, which was sent to block %d", id, w.block)
	case w.start > end:
		return fmt.Sprintf("write #%d, which was issued only at %s", id, fmtT(w.start))
	}
	return ""
}

// covering returns the first confirmed flush on w's incarnation that
// started after w completed, or nil (w failed, or no such flush).
func (c *checker) covering(w *op) *op {
	if !w.ok {
		return nil
	}
	for _, f := range c.flushes[w.inc] {
		if f.start >= w.end {
			return f
		}
	}
	return nil
}

// tenureOf returns the tenure an incarnation served in (nil if none).
func (c *checker) tenureOf(inc int) *tenure {
	if inc < 0 || inc >= len(c.r.incs) {
		return nil
	}
	t := c.r.incs[inc].tenure
	if t < 0 || t >= len(c.r.tenures) {
		return nil
	}
	return c.r.tenures[t]
}

// exempt reports whether a tenure's writes since its last commit may be
// lost (invariant 4; never under durability=store). That is the case when
// the tenure was taken over and its owner may have lost its lease first:
// the servers ran without leases (the takeover fences at once), or the
// owner's last incarnation was dead, paused or partitioned when the new
// server was launched, or it had been paused or partitioned for at least a
// lease duration at some time (its lease may have expired unnoticed).
func (c *checker) exempt(t *tenure) bool {
	if t == nil || c.r.durability == "store" || t.end != endTakeover {
		return false
	}
	if !c.r.leases || !t.ownerHealthy {
		return true
	}
	last := c.r.incs[t.incs[len(t.incs)-1]]
	for _, p := range last.pauses {
		if min(p.to, last.exit)-p.from >= c.r.lease {
			return true
		}
	}
	if t.node < len(c.r.partitions) {
		for _, p := range c.r.partitions[t.node] {
			from, to := max(p.from, last.launch), min(p.to, last.exit)
			if to-from >= c.r.lease {
				return true
			}
		}
	}
	return false
}

// durable checks invariants 3 and 4 against the final state.
//
// Strict rule (invariant 3, and invariant 4 for tenures that are not
// exempt): for every confirmed write w covered by a confirmed flush f of
// its own server incarnation (the first one that started after w
// completed), the block's final value is w or a write issued after w
// completed (a later write to the block, from any server, confirmed or
// not: f covers a later write of w's server too, and another server's
// write issued after w is newer). Checking every covered write, not only
// each block's last, is the same for histories that keep invariant 1, and
// stricter otherwise.
//
// Prefix rule (invariant 4, for exempt tenures): let W be the latest
// issued write of the tenure that survives (the block's final value is W).
// Every confirmed write of the tenure that completed before W was issued
// must not be lost, where lost means the block's final value is zeros or a
// write issued before it. Writes of an earlier incarnation of the tenure
// than W's count only when covered by a flush of their own incarnation (an
// unflushed write may die with its process). Writes whose fate cannot be
// told (the block holds a later write) pass.
func (c *checker) durable() []violation {
	if c.r.finalErr != "" {
		return []violation{{c.durInv(), "cannot read the final state: " + c.r.finalErr}}
	}
	var vs []violation
	for b, ws := range c.byBlock {
		fid := c.r.final[b]
		if c.r.finalBad[b] != "" {
			continue // reported by invariant 2
		}
		for _, w := range ws {
			f := c.covering(w)
			if f == nil || c.exempt(c.tenureOf(w.inc)) {
				continue
			}
			if fid == w.id {
				continue
			}
			if fw := c.writes[fid]; fid != 0 && fw != nil && fw.start > w.end {
				continue
			}
			vs = append(vs, violation{c.durInv(), fmt.Sprintf("block %d lost a flushed write: %s, flushed by [%s, %s]; the final state holds %s",
				b, w, fmtT(f.start), fmtT(f.end), c.describe(fid))})
		}
	}
	for _, t := range c.r.tenures {
		if c.exempt(t) {
			vs = append(vs, c.prefix(t)...)
		}
	}
	return vs
}

func (c *checker) durInv() string {
	if c.r.durability == "store" {
		return "3"
	}
	return "4"
}

// describe names a final value.
func (c *checker) describe(id uint64) string {
	if id == 0 {
		return "zeros"
	}
	if w := c.writes[id]; w != nil {
		return w.String()
	}
	return fmt.Sprintf("unknown write #%d", id)
}

// lost reports whether write w is known to be missing from the final state.
func (c *checker) lost(w *op) bool {
	fid := c.r.final[w.block]
	if c.r.finalBad[w.block] != "" || fid == w.id {
		return false
	}
	if fid == 0 {
		return true
	}
	fw := c.writes[fid]
	return fw != nil && fw.start < w.start
}

// prefix applies the prefix rule to an exempt tenure.
func (c *checker) prefix(t *tenure) []violation {
	in := map[int]bool{}
	for _, inc := range t.incs {
		in[inc] = true
	}
	var mine []*op
	var last *op // latest issued surviving write
	for i := range c.r.ops {
		o := &c.r.ops[i]
		if o.kind != opWrite || !in[o.inc] || o.block >= len(c.r.final) {
			continue
		}
		mine = append(mine, o)
		if c.r.final[o.block] == o.id && (last == nil || o.start > last.start) {
			last = o
		}
	}
	if last == nil {
		return nil
	}
	var vs []violation
	for _, w := range mine {
		if !w.ok || w.end >= last.start || !c.lost(w) {
			continue
		}
		if w.inc != last.inc && c.covering(w) == nil {
			continue
		}
		vs = append(vs, violation{"4", fmt.Sprintf("node %d's tenure %d (ended by %v) lost %s, though its later %s survived (final state of block %d: %s)",
			t.node, t.id, t.end, w, last, w.block, c.describe(c.r.final[w.block]))})
	}
	return vs
}

// summarize returns a one-line reason for a failed schedule.
func summarize(vs []violation) string {
	if len(vs) == 0 {
		return ""
	}
	count := map[string]int{}
	var order []string
	for _, v := range vs {
		if count[v.inv] == 0 {
			order = append(order, v.inv)
		}
		count[v.inv]++
	}
	var parts []string
	for _, k := range order {
		name := "invariant " + k
		if k == "stop" {
			name = "clean stop"
		}
		parts = append(parts, fmt.Sprintf("%s x%d", name, count[k]))
	}
	return fmt.Sprintf("%s; first: %s", strings.Join(parts, ", "), vs[0])
}
