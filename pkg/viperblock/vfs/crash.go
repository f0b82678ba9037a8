package vfs

import (
	"errors"
	"fmt"
	"math/rand"
	"os"
	"sync"
)

// ErrCrashed is what every operation returns once a Crasher's crash point
// has struck.
var ErrCrashed = errors.New("viperblock/vfs: crashed")

// Crasher simulates a machine crash at a chosen point of a sequence of
// operations on a MemFS, for crash tests outside the engine (the node's and
// the attacher's state files) as well as in it. Operations are counted from
// 0 as they reach the filesystem: create, open, write, read, sync, rename,
// remove, mkdir. Just before operation At, the crash strikes: Crashed
// returns the filesystem a power loss at that instant leaves (MemFS's
// CrashClone), and that operation and every later one fail with
// ErrCrashed. A run that does fewer than At+1 operations never crashes;
// Ops tells how many it did, so a test can try every point:
//
//	for at := 0; ; at++ {
//		c := vfs.NewCrasher(mem, at, rng)
//		err := work(c.FS())
//		after := c.Crashed() // nil: the work finished before point at
//		...
//		if after == nil { break }
//	}
type Crasher struct {
	mem *MemFS
	at  int
	rng *rand.Rand

	mu      sync.Mutex
	n       int      // operations seen
	ops     []string // "op name" of each, for messages
	crashed *MemFS
}

// NewCrasher returns a Crasher over mem that crashes before operation at;
// rng chooses how much unsynced data survives (nil: none).
func NewCrasher(mem *MemFS, at int, rng *rand.Rand) *Crasher {
	c := &Crasher{mem: mem, at: at, rng: rng}
	return c
}

// FS is the filesystem to hand to the code under test.
func (c *Crasher) FS() FS {
	return chmodFS{Error(c.mem, c.inject), c.mem}
}

func (c *Crasher) inject(op Op, name string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.crashed != nil {
		return ErrCrashed
	}
	if c.n == c.at {
		c.crashed = c.mem.CrashClone(c.rng)
		return fmt.Errorf("%w before %s %s", ErrCrashed, op, name)
	}
	c.n++
	c.ops = append(c.ops, string(op)+" "+name)
	return nil
}

// Crashed returns what the crash left, or nil if it has not struck.
func (c *Crasher) Crashed() *MemFS {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.crashed
}

// Ops lists the operations that happened before the crash (all of them if
// it did not strike).
func (c *Crasher) Ops() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.ops...)
}

// chmodFS keeps MemFS's Chmod visible through the error-injecting wrapper.
type chmodFS struct {
	FS
	mem *MemFS
}

func (c chmodFS) Chmod(name string, perm os.FileMode) error { return c.mem.Chmod(name, perm) }
