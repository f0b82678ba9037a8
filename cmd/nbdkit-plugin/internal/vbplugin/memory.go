package vbplugin

import (
	"runtime/debug"

	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
)

// A server's memory (memory=SIZE) divides into a fixed part, ProcessOverhead,
// and the engine's share (vb.Options.MemoryBytes), which the engine divides
// among pending writes, caches and drain buffers (see the engine's
// memory.go). The fixed part is what an nbdkit process running this plugin
// holds whatever it serves: nbdkit and the C libraries, the plugin's code
// and the Go runtime with its heap metadata, goroutine stacks, the store
// client, the volume's maps, and reads in flight (read-ahead fetches,
// nbdkit's request buffers). It was measured (VmRSS of an idle server and
// of servers under sustained writes, pkg/driver's budget test), and has
// headroom for the garbage the Go collector lets grow between cycles.
const (
	ProcessOverhead = 48 << 20
	// MinMemory is the smallest memory=.
	MinMemory = ProcessOverhead + vb.MinMemoryBytes
	// cOverhead is the part of ProcessOverhead outside the Go runtime
	// (nbdkit, libc, the mapped plugin): the Go memory limit leaves it out.
	cOverhead = 20 << 20
)

// memoryOptions applies memory=, pending_limit= and slab_pool= to the
// engine's options, and sets the Go runtime's memory limit (a soft limit:
// the collector runs as often as it must to stay under it, so garbage
// does not push the server past its share) when memory= is given.
func (c *Config) memoryOptions(o *vb.Options) {
	o.MaxPendingBytes = c.PendingLimit
	o.SlabPoolBytes = c.SlabPool
	if c.Memory <= 0 {
		return
	}
	o.MemoryBytes = c.Memory - ProcessOverhead
	debug.SetMemoryLimit(c.Memory - cOverhead)
}
