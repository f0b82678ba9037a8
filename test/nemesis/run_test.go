package nemesis

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/nbdkit"
)

// run is one schedule being executed. Everything but the history and the
// client goroutines' own connections belongs to the goroutine that runs
// the schedule: the processes, the model of who owns the volume, pending
// heals and resumes.
type run struct {
	t      *testing.T
	c      *cluster
	k      int
	seed   uint64
	rng    *rand.Rand
	tag    uint64
	volume string
	dir    string // sockets, WAL directories, the final image
	logDir string // nbdkit logs
	t0     time.Time

	durability     string // semantics checked: node or store
	passLease      bool   // lease_duration= given to the plugin
	passDurability bool   // durability= given to the plugin

	hist   history
	nextID atomic.Uint64 // write ids

	nodes      [numNodes]*node
	incs       []*incarnation
	procs      []*proc // by incarnation id
	tenures    []*tenure
	open       *tenure // the tenure that owns the volume now (model), or nil
	partitions [numNodes][]interval
	undos      []undo // pending heals and resumes, by time
	liveness   string
	stops      []string
}

// node is one simulated node.
type node struct {
	idx         int
	walDir      string
	gen         int // WAL directory generation (a lost node gets a new one)
	proxy       interface{ SetPartition(bool) }
	cur         *proc // the node's latest process (perhaps exited)
	partitioned bool
}

// proc is one nbdkit process and its client.
type proc struct {
	inc    *incarnation
	srv    *nbdkit.Server
	sock   string
	cl     *nbdClient // nil if the dial failed
	loop   *clientLoop
	paused bool
}

// undo is a heal or a resume due at a time.
type undo struct {
	at   time.Duration
	what string
	do   func()
}

// now is the schedule's clock.
func (r *run) now() time.Duration { return time.Since(r.t0) }

// event logs something the schedule did.
func (r *run) event(format string, args ...any) {
	r.t.Logf("%9s  %s", fmtT(r.now()), fmt.Sprintf(format, args...))
}

// unknownLease bounds the lease of a server not given lease_duration=: a
// plugin with leases of its own uses its default (15 s in the engine).
const unknownLease = 30 * time.Second

// serverLease is the servers' lease duration: NEMESIS_LEASE when passed to
// them, else unknownLease.
func (r *run) serverLease() time.Duration {
	if r.passLease {
		return r.c.cfg.lease
	}
	return unknownLease
}

// readyTimeout is how long a launch may wait for nbdkit to serve: a
// takeover may wait for the owner's lease to expire.
func (r *run) readyTimeout() time.Duration { return r.serverLease() + 15*time.Second }

// opDeadline bounds one NBD request: longer than the longest pause.
func (r *run) opDeadline() time.Duration { return 30*time.Second + 3*r.serverLease() }

// await waits until done is closed, running heals and resumes as they fall
// due meanwhile.
func (r *run) await(done <-chan struct{}) {
	for {
		var due <-chan time.Time
		var tm *time.Timer
		if len(r.undos) > 0 {
			tm = time.NewTimer(max(0, r.undos[0].at-r.now()))
			due = tm.C
		}
		select {
		case <-done:
			if tm != nil {
				tm.Stop()
			}
			return
		case <-due:
			r.runUndos(r.now())
		}
	}
}

// sleep waits for d, running heals and resumes as they fall due.
func (r *run) sleep(d time.Duration) {
	tm := time.NewTimer(d)
	defer tm.Stop()
	done := make(chan struct{})
	go func() { <-tm.C; close(done) }()
	r.await(done)
}

// runUndos runs the heals and resumes due by t.
func (r *run) runUndos(t time.Duration) {
	for len(r.undos) > 0 && r.undos[0].at <= t {
		u := r.undos[0]
		r.undos = r.undos[1:]
		u.do()
	}
}

func (r *run) addUndo(u undo) {
	i := 0
	for i < len(r.undos) && r.undos[i].at <= u.at {
		i++
	}
	r.undos = append(r.undos[:i], append([]undo{u}, r.undos[i:]...)...)
}

// running reports whether p's nbdkit still runs.
func (p *proc) running() bool {
	if p == nil {
		return false
	}
	select {
	case <-p.srv.Done():
		return false
	default:
		return true
	}
}

// running returns the node's running process, or nil.
func (n *node) running() *proc {
	if n.cur.running() {
		return n.cur
	}
	return nil
}

// reap records the exit of processes that died on their own.
func (r *run) reap() {
	for _, p := range r.procs {
		if p != nil && p.inc.exit == never && !p.running() {
			r.exited(p)
			r.event("node %d inc %d exited by itself (%s)", p.inc.node, p.inc.id, p.inc.exitStatus)
		}
	}
}

// exited records p's exit, which has happened.
func (r *run) exited(p *proc) {
	<-p.srv.Done()
	if p.inc.exit != never {
		return
	}
	p.inc.exit = r.now()
	p.inc.exitStatus = "exit status 0"
	if err := p.srv.Wait(); err != nil {
		p.inc.exitStatus = firstLine(err.Error())
		var ee *nbdkit.ExitError
		if errors.As(err, &ee) {
			p.inc.exitStatus = ee.Status
		}
	}
	if p.paused {
		p.paused = false
		p.inc.pauses[len(p.inc.pauses)-1].to = p.inc.exit
	}
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return strings.TrimSuffix(s, ":")
}

// ownerProc returns the owner's running process (model), or nil.
func (r *run) ownerProc() *proc {
	if r.open == nil {
		return nil
	}
	p := r.procs[r.open.incs[len(r.open.incs)-1]]
	if p.running() {
		return p
	}
	return nil
}

// ownerNode returns the owner's node (model), or -1.
func (r *run) ownerNode() int {
	if r.open == nil {
		return -1
	}
	return r.open.node
}

// ownerHealthy reports whether the owner's server runs unpaused and
// reaches the store.
func (r *run) ownerHealthy() bool {
	p := r.ownerProc()
	return p != nil && !p.paused && !r.nodes[p.inc.node].partitioned
}

// launch starts nbdkit on node n (which runs none and is not partitioned)
// and, once it serves, its client; it returns nil if nbdkit did not serve.
// A launch on another node than the owner's is a takeover.
func (r *run) launch(n *node, why string) *proc {
	healthy := r.ownerHealthy()
	inc := &incarnation{id: len(r.incs), node: n.idx, tenure: -1, launch: r.now(), exit: never}
	r.incs = append(r.incs, inc)
	r.procs = append(r.procs, nil)
	params := []string{"volume=" + r.volume, "wal_dir=" + n.walDir, "drain_interval=" + r.c.cfg.drain.String()}
	if r.passLease {
		params = append(params, "lease_duration="+r.c.cfg.lease.String())
	}
	if r.passDurability {
		params = append(params, "durability="+r.durability)
	}
	logf, err := os.Create(filepath.Join(r.logDir, fmt.Sprintf("inc%02d-node%d.log", inc.id, n.idx)))
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { logf.Close() })
	fmt.Fprintf(logf, "nemesis: %s: nbdkit %s (extra environment: %q)\n", why, strings.Join(params, " "), r.c.cfg.env)
	sock := filepath.Join(r.dir, fmt.Sprintf("i%d.sock", inc.id))
	env := append([]string{"VBLOCK_STORE=" + r.c.storeURL(n.idx)}, r.c.cfg.env...)
	r.event("node %d inc %d: launch nbdkit (%s)", n.idx, inc.id, why)
	var srv *nbdkit.Server
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv, err = nbdkit.Start(context.Background(), nbdkit.Config{
			Plugin: r.c.plugin, Socket: sock, Params: params, Env: env,
			Output: logf, Ready: r.readyTimeout(), ExitWithParent: true,
		})
	}()
	r.await(done)
	if err != nil {
		inc.exit, inc.exitStatus = r.now(), firstLine(err.Error())
		r.event("node %d inc %d: did not serve: %s", n.idx, inc.id, inc.exitStatus)
		return nil
	}
	inc.ready = r.now()
	p := &proc{inc: inc, srv: srv, sock: sock}
	r.procs[inc.id] = p
	n.cur = p
	r.t.Cleanup(func() { _ = srv.Kill(); <-srv.Done() })
	// Ownership, as the model sees it: the latest server to open the
	// volume owns it.
	if r.open != nil && r.open.node == n.idx {
		r.open.incs = append(r.open.incs, inc.id)
	} else {
		if r.open != nil {
			r.open.end, r.open.ownerHealthy = endTakeover, healthy
		}
		r.open = &tenure{id: len(r.tenures), node: n.idx}
		r.open.incs = []int{inc.id}
		r.tenures = append(r.tenures, r.open)
	}
	inc.tenure = r.open.id
	r.event("node %d inc %d: serving after %s (tenure %d)", n.idx, inc.id, (inc.ready - inc.launch).Round(time.Millisecond), inc.tenure)
	if cl, err := dialNBD(sock, r.opDeadline()); err != nil {
		r.event("node %d inc %d: cannot connect: %v", n.idx, inc.id, err)
	} else {
		p.cl = cl
		r.startClient(p)
	}
	return p
}

// kill9 kills p's nbdkit with SIGKILL (paused or not) and waits for it and
// its client.
func (r *run) kill9(p *proc) {
	_ = p.srv.Kill()
	r.exited(p)
	r.stopClient(p)
	r.event("node %d inc %d: killed (kill -9)", p.inc.node, p.inc.id)
}

// terminate stops p's client, disconnects, sends SIGTERM and waits up to
// timeout for nbdkit to drain and exit (then kills it). It reports whether
// nbdkit exited with status 0.
func (r *run) terminate(p *proc, timeout time.Duration) bool {
	if p.paused { // the client and SIGTERM would wait for the SIGCONT
		r.resume(p)
	}
	r.stopClient(p)
	if p.cl != nil {
		p.cl.close()
	}
	_ = p.srv.Signal(syscall.SIGTERM)
	tm := time.AfterFunc(timeout, func() { _ = p.srv.Kill() })
	r.await(p.srv.Done())
	tm.Stop()
	r.exited(p)
	r.event("node %d inc %d: stopped (SIGTERM): %s", p.inc.node, p.inc.id, p.inc.exitStatus)
	return p.inc.exitStatus == "exit status 0"
}

// pause stops p's nbdkit (SIGSTOP) until a resume d later.
func (r *run) pause(p *proc, d time.Duration) {
	_ = p.srv.Signal(syscall.SIGSTOP)
	waitStopped(p.srv.Pid())
	p.paused = true
	at := r.now()
	p.inc.pauses = append(p.inc.pauses, interval{at, never})
	r.event("node %d inc %d: paused (SIGSTOP) for %s", p.inc.node, p.inc.id, d.Round(time.Millisecond))
	r.addUndo(undo{at: at + d, what: "resume", do: func() { r.resume(p) }})
}

// resume continues a paused nbdkit (SIGCONT).
func (r *run) resume(p *proc) {
	if !p.paused || !p.running() {
		return
	}
	_ = p.srv.Signal(syscall.SIGCONT)
	p.paused = false
	p.inc.pauses[len(p.inc.pauses)-1].to = r.now()
	r.event("node %d inc %d: resumed (SIGCONT)", p.inc.node, p.inc.id)
}

// waitStopped waits (briefly) until every thread of pid is stopped, so the
// recorded pause time is not before the pause.
func waitStopped(pid int) {
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if err != nil {
			return
		}
		all := true
		for _, e := range ents {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, e.Name()))
			if err != nil {
				continue
			}
			// The state follows the parenthesized command name.
			s := string(b)
			if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) && s[i+2] != 'T' && s[i+2] != 't' {
				all = false
				break
			}
		}
		if all {
			return
		}
		time.Sleep(time.Millisecond)
	}
}

// partition cuts node n off the store until a heal d later.
func (r *run) partition(n *node, d time.Duration) {
	n.proxy.SetPartition(true)
	n.partitioned = true
	at := r.now()
	r.partitions[n.idx] = append(r.partitions[n.idx], interval{at, never})
	r.event("node %d: partitioned from the store for %s", n.idx, d.Round(time.Millisecond))
	r.addUndo(undo{at: at + d, what: "heal", do: func() { r.heal(n) }})
}

func (r *run) heal(n *node) {
	if !n.partitioned {
		return
	}
	n.proxy.SetPartition(false)
	n.partitioned = false
	ps := r.partitions[n.idx]
	ps[len(ps)-1].to = r.now()
	r.event("node %d: healed", n.idx)
}

// logTail returns the last n lines of every nbdkit log of the schedule.
func (r *run) logTail(n int) string {
	var b strings.Builder
	for _, inc := range r.incs {
		path := filepath.Join(r.logDir, fmt.Sprintf("inc%02d-node%d.log", inc.id, inc.node))
		f, err := os.Open(path)
		if err != nil {
			continue
		}
		var lines []string
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			lines = append(lines, sc.Text())
		}
		f.Close()
		fmt.Fprintf(&b, "--- inc %d node %d (%s; %s at %s):\n", inc.id, inc.node, filepath.Base(path), inc.exitStatus, fmtT(inc.exit))
		for _, l := range lines[max(0, len(lines)-n):] {
			b.WriteString("    " + l + "\n")
		}
	}
	return b.String()
}

// clientLoop is the workload goroutine of one server.
type clientLoop struct {
	stop chan struct{}
	done chan struct{}
}

// startClient starts p's workload: write a fresh value to a random block
// and FLUSH, and now and then read a random block, until stopped or the
// connection dies.
func (r *run) startClient(p *proc) {
	l := &clientLoop{stop: make(chan struct{}), done: make(chan struct{})}
	p.loop = l
	rng := rand.New(rand.NewPCG(r.rng.Uint64(), uint64(p.inc.id)))
	go func() {
		defer close(l.done)
		for {
			select {
			case <-l.stop:
				return
			default:
			}
			block := rng.IntN(r.c.cfg.blocks)
			var err error
			if rng.IntN(8) == 0 {
				err = r.read(p, block)
			} else if err = r.write(p, block); err == nil {
				err = r.flush(p)
			}
			if p.cl.broken != nil {
				return
			}
			if err != nil { // EIO and the like: do not spin
				select {
				case <-l.stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
			}
		}
	}()
}

// stopClient stops p's workload after its current request and waits.
func (r *run) stopClient(p *proc) {
	if p.loop == nil {
		return
	}
	select {
	case <-p.loop.stop:
	default:
		close(p.loop.stop)
	}
	r.await(p.loop.done)
}

// write sends one write of a fresh value to block and records it.
func (r *run) write(p *proc, block int) error {
	id := r.nextID.Add(1)
	buf := encodeValue(value{Tag: r.tag, ID: id, Node: uint32(p.inc.node), Inc: uint32(p.inc.id), Block: uint64(block)})
	i := r.hist.begin(op{kind: opWrite, node: p.inc.node, inc: p.inc.id, start: r.now(), block: block, id: id})
	err := p.cl.writeAt(buf, uint64(block)*blockSize)
	r.hist.finish(i, r.now(), err, 0, "")
	return err
}

// flush sends one FLUSH and records it.
func (r *run) flush(p *proc) error {
	i := r.hist.begin(op{kind: opFlush, node: p.inc.node, inc: p.inc.id, start: r.now(), block: -1})
	err := p.cl.flush()
	r.hist.finish(i, r.now(), err, 0, "")
	return err
}

// read reads block and records what it held.
func (r *run) read(p *proc, block int) error {
	buf := make([]byte, blockSize)
	i := r.hist.begin(op{kind: opRead, node: p.inc.node, inc: p.inc.id, start: r.now(), block: block})
	err := p.cl.readAt(buf, uint64(block)*blockSize)
	end := r.now()
	var id uint64
	bad := ""
	if err == nil {
		v, _, derr := decodeValue(buf, r.tag, uint64(block))
		switch {
		case errors.Is(derr, errTorn):
			bad = fmt.Sprintf("%v (first bytes %x)", derr, buf[:16])
		case derr != nil:
			bad = fmt.Sprintf("%v (%+v)", derr, v)
		default:
			id = v.ID
		}
	}
	r.hist.finish(i, end, err, id, bad)
	return err
}
