package vbplugin

import (
	"fmt"
	"runtime/debug"

	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
)

// A server's memory (memory=SIZE) divides into three parts:
//
//   - ProcessOverhead, fixed: what an nbdkit process running this plugin
//     holds whatever it serves: nbdkit and the C libraries, the plugin's
//     code, and the Go runtime with its heap metadata, goroutine stacks,
//     the store client, the volume's maps, reads in flight and the garbage
//     the collector lets grow between cycles;
//   - the request buffers (RequestBuffers): nbdkit reads every read or
//     write request's data into a buffer of its worker thread, outside the
//     Go heap, and a thread keeps its buffer, as large as the largest
//     request it has served, until its connection closes. A connection has
//     ServerThreads of them, and a well-behaved client sends no request
//     larger than the maximum the plugin advertises (max_request=), so a
//     server with Connections connections holds at most
//     Connections × threads × (max_request + threadBytes);
//   - the engine's share (vb.Options.MemoryBytes), what is left, which the
//     engine divides among pending writes, caches and drain buffers (see
//     the engine's memory.go).
//
// The Go runtime's memory limit is the memory less the parts outside it
// (cOverhead and the request buffers): a soft limit, the collector runs as
// often as it must to stay under it, so garbage does not push the server
// past its share.
//
// The numbers were measured with the node's budget test (test/nbd,
// TestNodeMemoryBudget: servers written concurrently past their pending
// limit and read back, their Pss sampled): a server at memory=96MiB holds
// about 75 MiB in the Go runtime (its limit, 76 MiB), 15 MiB of mapped code
// (shared between servers, 12 MiB of it the plugin's) and 2 MiB of other C
// memory besides its request buffers, each of those a mapping of the
// request size and a page. Each part has headroom over what was seen.
const (
	ProcessOverhead = 48 << 20
	// cOverhead is the part of ProcessOverhead outside the Go runtime
	// (nbdkit, libc, the mapped plugin).
	cOverhead = 20 << 20
	// threadBytes is what a worker thread holds besides its request
	// buffer: the buffer's page of malloc header, the stack it has
	// touched, its share of malloc's arenas (measured: about 20 KiB in
	// all besides the header page).
	threadBytes = 64 << 10
	// DefaultMaxRequest is the largest request advertised without
	// memory= (nbdkit refuses more than 64 MiB anyway), and
	// DefaultBudgetMaxRequest the one advertised with memory=: small
	// enough that a connection's buffers stay a small part of a share,
	// large enough for sequential I/O to go at full speed.
	DefaultMaxRequest       = 32 << 20
	DefaultBudgetMaxRequest = 1 << 20
	// minMaxRequest is the smallest max_request=.
	minMaxRequest = 64 << 10
)

// RequestBuffers is the most memory nbdkit's worker threads hold for
// request data: connections × threads × (maxRequest + threadBytes).
func RequestBuffers(connections, threads int, maxRequest int64) int64 {
	return int64(connections) * int64(threads) * (maxRequest + threadBytes)
}

// MinMemory is the smallest memory= for a server with the given
// connections, threads per connection and largest request.
func MinMemory(connections, threads int, maxRequest int64) int64 {
	return ProcessOverhead + RequestBuffers(connections, threads, maxRequest) + vb.MinMemoryBytes
}

// completeMemory fills the request size's default and checks that memory=
// leaves the engine its smallest share beside the fixed part and the
// request buffers.
func (c *Config) completeMemory() error {
	if c.MaxRequest == 0 {
		c.MaxRequest = DefaultMaxRequest
		if c.Memory > 0 {
			c.MaxRequest = DefaultBudgetMaxRequest
		}
	}
	if c.Connections == 0 {
		c.Connections = 1
	}
	if c.Threads <= 0 {
		c.Threads = DefaultThreads
	}
	if c.Memory <= 0 {
		return nil
	}
	if min := MinMemory(c.Connections, c.Threads, c.MaxRequest); c.Memory < min {
		return fmt.Errorf("memory=%d: at least %d MiB for %d connection(s) of %d nbdkit threads with requests of up to %d KiB (a server's fixed %d MiB, %d MiB of request buffers and the engine's smallest share, %d MiB); lower nbdkit --threads, connections= or max_request=",
			c.Memory, (min+1<<20-1)>>20, c.Connections, c.Threads, c.MaxRequest>>10, ProcessOverhead>>20,
			(RequestBuffers(c.Connections, c.Threads, c.MaxRequest)+1<<20-1)>>20, vb.MinMemoryBytes>>20)
	}
	return nil
}

// memoryOptions applies memory=, pending_limit= and slab_pool= to the
// engine's options, and sets the Go runtime's memory limit when memory= is
// given (see above).
func (c *Config) memoryOptions(o *vb.Options) {
	o.MaxPendingBytes = c.PendingLimit
	o.SlabPoolBytes = c.SlabPool
	if c.Memory <= 0 {
		return
	}
	bufs := RequestBuffers(c.Connections, c.Threads, c.MaxRequest)
	o.MemoryBytes = c.Memory - ProcessOverhead - bufs
	debug.SetMemoryLimit(c.Memory - cOverhead - bufs)
}
