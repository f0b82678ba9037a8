package nemesis

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// choice is one event the schedule may take next.
type choice struct {
	weight float64
	do     func()
}

// step picks one applicable event at random and runs it.
func (r *run) step() {
	owner := r.ownerNode()
	op := r.ownerProc()
	lease := r.c.cfg.lease
	var cs []choice
	on := r.c.cfg.events
	add := func(kind string, w float64, do func()) {
		if on[kind] || kind == "start" {
			cs = append(cs, choice{w, do})
		}
	}
	nodesWhere := func(ok func(n *node) bool) []*node {
		var ns []*node
		for _, n := range r.nodes {
			if ok(n) {
				ns = append(ns, n)
			}
		}
		return ns
	}
	// pick prefers the owner's node half of the time.
	pick := func(ns []*node) *node {
		if owner >= 0 && r.rng.IntN(2) == 0 {
			for _, n := range ns {
				if n.idx == owner {
					return n
				}
			}
		}
		return ns[r.rng.IntN(len(ns))]
	}
	// free retires a stale server on a takeover's target node first.
	free := func(n *node) {
		if p := n.running(); p != nil {
			r.event("node %d inc %d: retire the stale server first", n.idx, p.inc.id)
			r.retire(p)
		}
	}
	others := func() []*node {
		return nodesWhere(func(n *node) bool { return n.idx != owner && !n.partitioned })
	}

	// Partitions and pauses hit nodes that run a server: the owner, or a
	// stale server that must not confirm flushes any more.
	if ns := nodesWhere(func(n *node) bool { return !n.partitioned && n.running() != nil }); len(ns) > 0 {
		add("partition", 2, func() { r.partition(pick(ns), scaled(r.rng, lease, 0.5, 3)) })
	}
	if ns := nodesWhere(func(n *node) bool { p := n.running(); return p != nil && !p.paused }); len(ns) > 0 {
		add("pause", 2, func() { n := pick(ns); r.pause(n.running(), scaled(r.rng, lease, 1.5, 3)) })
	}
	if ns := nodesWhere(func(n *node) bool { return n.running() != nil && !n.partitioned }); len(ns) > 0 {
		add("crash", 1.5, func() {
			n := pick(ns)
			r.event("event: crash node %d and restart it on the same WAL directory", n.idx)
			r.kill9(n.running())
			r.launch(n, "restart after kill -9")
		})
	}
	if op != nil && !op.paused && !r.nodes[owner].partitioned {
		if ns := others(); len(ns) > 0 {
			add("move", 1.5, func() {
				n := ns[r.rng.IntN(len(ns))]
				r.event("event: clean move node %d -> node %d", owner, n.idx)
				r.stopOwner(op, "clean move")
				free(n)
				r.launch(n, fmt.Sprintf("clean move from node %d", owner))
			})
		}
	}
	if r.open != nil {
		if ns := others(); len(ns) > 0 {
			add("takeover", 2, func() {
				n := ns[r.rng.IntN(len(ns))]
				r.event("event: forced takeover by node %d from node %d (%s)", n.idx, owner, r.ownerState())
				free(n)
				r.launch(n, fmt.Sprintf("forced takeover from node %d", owner))
			})
		}
	}
	if r.durability == "store" && op != nil {
		if ns := others(); len(ns) > 0 {
			add("lose", 1, func() {
				n := ns[r.rng.IntN(len(ns))]
				r.event("event: node %d lost for good; node %d takes over", owner, n.idx)
				r.lose(r.nodes[owner])
				free(n)
				r.launch(n, fmt.Sprintf("node %d lost", owner))
			})
		}
	}
	if ns := nodesWhere(func(n *node) bool { return n.idx != owner && n.running() != nil }); len(ns) > 0 {
		add("retire", 0.7, func() {
			n := ns[r.rng.IntN(len(ns))]
			r.event("event: retire node %d's stale server", n.idx)
			r.retire(n.running())
		})
	}
	if r.open == nil {
		if ns := nodesWhere(func(n *node) bool { return n.running() == nil && !n.partitioned }); len(ns) > 0 {
			cs = nil // restoring service comes first
			add("start", 1, func() {
				n := ns[r.rng.IntN(len(ns))]
				r.event("event: nobody owns the volume; start node %d", n.idx)
				r.launch(n, "no owner")
			})
		}
	}
	if len(cs) == 0 {
		return
	}
	total := 0.0
	for _, c := range cs {
		total += c.weight
	}
	x := r.rng.Float64() * total
	for _, c := range cs {
		if x -= c.weight; x < 0 {
			c.do()
			return
		}
	}
	cs[len(cs)-1].do()
}

// scaled returns a random duration in [lo, hi] times d.
func scaled(rng *rand.Rand, d time.Duration, lo, hi float64) time.Duration {
	return time.Duration(float64(d) * (lo + rng.Float64()*(hi-lo)))
}

// ownerState describes the owner's server for the event log.
func (r *run) ownerState() string {
	p := r.ownerProc()
	switch {
	case p == nil:
		return "dead"
	case p.paused && r.nodes[p.inc.node].partitioned:
		return "paused and partitioned"
	case p.paused:
		return "paused"
	case r.nodes[p.inc.node].partitioned:
		return "partitioned"
	}
	return "healthy"
}

// stopOwner stops the owner's server cleanly: it must drain and exit 0.
func (r *run) stopOwner(p *proc, why string) {
	if r.terminate(p, time.Minute) {
		r.open.end = endClean
	} else {
		r.open.end = endUncleanStop
		r.stops = append(r.stops, fmt.Sprintf("%s: node %d inc %d: %s", why, p.inc.node, p.inc.id, p.inc.exitStatus))
	}
	r.open = nil
}

// retire stops a stale (not owning) server: SIGTERM, or SIGKILL if it does
// not exit within 20 s. Its exit status is not judged.
func (r *run) retire(p *proc) {
	r.terminate(p, 20*time.Second)
}

// lose kills the owner's server and deletes its WAL directory; the node
// comes back, if ever, with an empty one.
func (r *run) lose(n *node) {
	r.kill9(n.running())
	if err := os.RemoveAll(n.walDir); err != nil {
		r.t.Fatal(err)
	}
	n.gen++
	n.walDir = filepath.Join(r.dir, fmt.Sprintf("wal%d.%d", n.idx, n.gen))
	r.open.end = endLost
	r.open = nil
	r.event("node %d: WAL directory deleted", n.idx)
}

// finish ends the schedule: heals every partition, resumes every paused
// server, makes sure some server owns the volume, checks invariant 5, stops
// every server (the owner cleanly) and reads the final state.
func (r *run) finish() {
	r.event("schedule over: heal every partition, resume every paused server")
	r.runUndos(never)
	r.reap()
	if r.ownerProc() == nil {
		var n *node
		if r.open != nil && r.nodes[r.open.node].running() == nil {
			n = r.nodes[r.open.node] // restart the crashed owner
		} else {
			for _, c := range r.nodes {
				if c.running() == nil {
					n = c
					break
				}
			}
		}
		if n == nil { // every node runs a stale server
			n = r.nodes[r.rng.IntN(numNodes)]
			r.retire(n.running())
		}
		r.launch(n, "an owner for the end of the schedule")
	}
	r.probeLiveness()
	r.stopAll()
}

// probeLiveness checks invariant 5: within a lease and 10 s of the end of
// the faults (the lease: see serverLease), exactly one server can write and flush, twice in a row, and
// every other running server's write or flush fails. The workload stops
// first; the probes use the clients' connections (or a new one).
func (r *run) probeLiveness() {
	var ps []*proc
	for _, n := range r.nodes {
		if p := n.running(); p != nil {
			r.stopClient(p)
			ps = append(ps, p)
		}
	}
	if len(ps) == 0 {
		r.liveness = "no server runs at the end of the schedule"
		return
	}
	window := r.serverLease() + 10*time.Second
	deadline := r.now() + window
	prev := -1
	for {
		var ok []int
		var res []string
		for _, p := range ps {
			if !p.running() {
				res = append(res, fmt.Sprintf("node %d: exited", p.inc.node))
				continue
			}
			if p.cl == nil || p.cl.broken != nil {
				cl, err := dialNBD(p.sock, r.opDeadline())
				if err != nil {
					res = append(res, fmt.Sprintf("node %d: cannot connect: %v", p.inc.node, err))
					continue
				}
				p.cl = cl
			}
			err := r.write(p, r.rng.IntN(r.c.cfg.blocks))
			if err == nil {
				err = r.flush(p)
			}
			if err == nil {
				ok = append(ok, p.inc.node)
				res = append(res, fmt.Sprintf("node %d: ok", p.inc.node))
			} else {
				res = append(res, fmt.Sprintf("node %d: %v", p.inc.node, err))
			}
		}
		if len(ok) == 1 && ok[0] == prev {
			r.event("invariant 5: only node %d writes and flushes (%s)", prev, strings.Join(res, "; "))
			if prev != r.ownerNode() {
				r.event("note: the model's owner is node %d", r.ownerNode())
			}
			return
		}
		prev = -1
		if len(ok) == 1 {
			prev = ok[0]
		}
		if r.now() > deadline {
			r.liveness = fmt.Sprintf("%s after the faults ended, %d servers could write and flush, want exactly one: %s",
				window, len(ok), strings.Join(res, "; "))
			return
		}
		r.sleep(200 * time.Millisecond)
	}
}

// stopAll stops the stale servers, then the owner, which must drain and
// exit 0.
func (r *run) stopAll() {
	op := r.ownerProc()
	for _, n := range r.nodes {
		if p := n.running(); p != nil && p != op {
			r.retire(p)
		}
	}
	if op != nil {
		r.stopOwner(op, "final stop")
	} else {
		r.stops = append(r.stops, "final stop: no server owned the volume at the end")
	}
}

// readFinal reads the volume's committed state with `vblock export` from
// the store itself and decodes every block.
func (r *run) readFinal(rec *record) {
	img := filepath.Join(r.dir, "final.img")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, r.c.vblock, "export", r.volume, img, "--progress", "never")
	cmd.Env = append(os.Environ(), "VBLOCK_STORE="+r.c.storeURL(-1))
	if out, err := cmd.CombinedOutput(); err != nil {
		rec.finalErr = fmt.Sprintf("vblock export: %v: %s", err, strings.TrimSpace(string(out)))
		return
	}
	b, err := os.ReadFile(img)
	if err != nil {
		rec.finalErr = err.Error()
		return
	}
	defer os.Remove(img)
	n := len(b) / blockSize
	rec.blocks = n
	rec.final = make([]uint64, n)
	rec.finalBad = make([]string, n)
	for i := 0; i < n; i++ {
		blk := b[i*blockSize : (i+1)*blockSize]
		v, _, err := decodeValue(blk, r.tag, uint64(i))
		if err != nil {
			rec.finalBad[i] = fmt.Sprintf("%v (first bytes %x)", err, blk[:16])
		} else {
			rec.final[i] = v.ID
		}
	}
}

// record assembles the checker's input.
func (r *run) record() *record {
	rec := &record{
		tag: r.tag, durability: r.durability, leases: r.passLease, lease: r.c.cfg.lease,
		blocks: r.c.cfg.blocks, ops: r.hist.snapshot(), incs: r.incs, tenures: r.tenures,
		liveness: r.liveness, stops: r.stops,
	}
	for _, ps := range r.partitions {
		rec.partitions = append(rec.partitions, ps)
	}
	r.readFinal(rec)
	if rec.final == nil {
		rec.final = make([]uint64, rec.blocks)
		rec.finalBad = make([]string, rec.blocks)
	}
	return rec
}

// summary counts the schedule's operations for the log.
func summary(ops []op) string {
	type key struct {
		k  opKind
		ok bool
	}
	n := map[key]int{}
	for _, o := range ops {
		n[key{o.kind, o.ok}]++
	}
	var parts []string
	for _, k := range []opKind{opWrite, opFlush, opRead} {
		parts = append(parts, fmt.Sprintf("%v: %d ok, %d failed", k, n[key{k, true}], n[key{k, false}]))
	}
	return strings.Join(parts, "; ")
}

// describe lists the schedule's servers and tenures for a failure report.
func (r *run) describe() string {
	var b strings.Builder
	for _, inc := range r.incs {
		var ps []string
		for _, p := range inc.pauses {
			ps = append(ps, fmt.Sprintf("[%s, %s]", fmtT(p.from), fmtT(p.to)))
		}
		fmt.Fprintf(&b, "  inc %d: node %d tenure %d launched %s ready %s exited %s (%s) paused %s\n",
			inc.id, inc.node, inc.tenure, fmtT(inc.launch), fmtT(inc.ready), fmtT(inc.exit), inc.exitStatus, strings.Join(ps, " "))
	}
	for _, t := range r.tenures {
		health := ""
		if t.end == endTakeover {
			health = fmt.Sprintf(" (owner healthy at the launch: %v)", t.ownerHealthy)
		}
		fmt.Fprintf(&b, "  tenure %d: node %d incs %v ended by %v%s\n", t.id, t.node, t.incs, t.end, health)
	}
	for i, ps := range r.partitions {
		for _, p := range ps {
			fmt.Fprintf(&b, "  node %d partitioned [%s, %s]\n", i, fmtT(p.from), fmtT(p.to))
		}
	}
	return b.String()
}
