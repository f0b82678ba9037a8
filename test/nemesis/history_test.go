package nemesis

import (
	"fmt"
	"math"
	"sync"
	"time"
)

// Everything the checker judges is recorded here, on one clock: the
// monotonic time since the schedule started, as the test process sees it.

// never is the end of an operation that never completed.
const never = time.Duration(math.MaxInt64)

type opKind uint8

const (
	opWrite opKind = iota
	opFlush
	opRead
)

func (k opKind) String() string {
	return [...]string{"write", "flush", "read"}[k]
}

// op is one NBD request a client sent. start is taken just before the
// request is written to the socket, end just after its reply was read (or
// the request failed); end is never for a request still outstanding.
type op struct {
	kind       opKind
	node, inc  int
	start, end time.Duration
	ok         bool
	err        string
	block      int
	// id: for a write, the write id its value carries; for a read, the
	// write id of the value read (0 for zeros).
	id uint64
	// bad: for a read, why the block read was not a value some write gave
	// it (decode error); "" otherwise.
	bad string
}

func (o *op) String() string {
	res := "ok"
	if !o.ok {
		res = "failed"
		if o.err != "" {
			res += " (" + o.err + ")"
		}
	}
	s := fmt.Sprintf("node %d inc %d %v", o.node, o.inc, o.kind)
	if o.kind != opFlush {
		s += fmt.Sprintf(" block %d", o.block)
	}
	if o.kind == opWrite {
		s += fmt.Sprintf(" #%d", o.id)
	}
	return s + fmt.Sprintf(" [%s, %s] %s", fmtT(o.start), fmtT(o.end), res)
}

// fmtT formats a time on the schedule's clock.
func fmtT(d time.Duration) string {
	if d == never {
		return "never"
	}
	return fmt.Sprintf("%.3fs", d.Seconds())
}

// interval is [from, to) on the schedule's clock; to is never while open.
type interval struct{ from, to time.Duration }

// history collects operations from the client goroutines.
type history struct {
	mu  sync.Mutex // guards ops
	ops []op
}

// begin records an operation that starts now and returns its index for
// finish.
func (h *history) begin(o op) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	o.end = never
	h.ops = append(h.ops, o)
	return len(h.ops) - 1
}

// finish completes operation i. For a read, id and bad are what it saw.
func (h *history) finish(i int, end time.Duration, err error, id uint64, bad string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	o := &h.ops[i]
	o.end, o.ok, o.id, o.bad = end, err == nil, max(o.id, id), bad
	if err != nil {
		o.err = err.Error()
	}
}

// snapshot returns a copy of the operations.
func (h *history) snapshot() []op {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]op(nil), h.ops...)
}

// tenureEnd says how a tenure ended.
type tenureEnd uint8

const (
	endOpen        tenureEnd = iota // still the owner
	endClean                        // SIGTERM, drained, exit status 0
	endUncleanStop                  // SIGTERM, non-zero exit status
	endTakeover                     // another node opened the volume
	endLost                         // killed and its WAL directory deleted
)

func (e tenureEnd) String() string {
	return [...]string{"open", "clean stop", "unclean stop", "takeover", "lost"}[e]
}

// tenure is one node's uninterrupted ownership: the server incarnations
// that opened the volume on that node's WAL directory, one after another
// (a kill -9 and a restart on the same directory continue a tenure), with
// no open on another node in between.
type tenure struct {
	id, node int
	incs     []int
	end      tenureEnd
	// At a takeover: whether the owner's last incarnation was running,
	// not paused and not partitioned when the new server was launched.
	ownerHealthy bool
}

// incarnation is one nbdkit process.
type incarnation struct {
	id, node, tenure int // tenure -1: never opened the volume
	launch, ready    time.Duration
	exit             time.Duration // never while it runs
	exitStatus       string
	pauses           []interval // SIGSTOP .. SIGCONT (or its death)
}

// record is one schedule's complete record, the checker's input.
type record struct {
	tag        uint64
	durability string // "node" or "store": the semantics checked
	leases     bool   // the servers ran with lease_duration=
	lease      time.Duration
	blocks     int // blocks in the volume
	ops        []op
	incs       []*incarnation
	tenures    []*tenure
	partitions [][]interval // per node
	// final is each block's value in the volume's final committed state:
	// a write id, 0 for zeros; finalBad[b] != "" if block b did not decode.
	final    []uint64
	finalBad []string
	// finalErr is set when the final state could not be read.
	finalErr string
	// liveness is the failure of invariant 5 ("" if it held).
	liveness string
	// stops lists clean stops that did not exit 0.
	stops []string
}
