// Package cache is the block read cache: an LRU of 4 KiB blocks keyed by
// their immutable location (chunk id, index in chunk), so entries never need
// invalidation. It is split into 16 shards, each with its own lock and LRU
// list, so concurrent readers rarely contend.
package cache

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// BlockSize is the size of a cached block.
const BlockSize = 4096

const nShards = 16

// Key names a block by where it lives in the backend: a volume-table index
// (see package manifest), a chunk id and the block's index in the chunk.
type Key struct {
	Vol   uint32
	Chunk uint64
	Index uint32
}

// LRU is a fixed-capacity block cache. The zero capacity disables caching.
type LRU struct {
	shards [nShards]shard
	hits   atomic.Uint64
	misses atomic.Uint64
}

type node struct {
	key        Key
	data       []byte
	prev, next int32
}

type shard struct {
	mu    sync.Mutex // guards everything below
	index map[Key]int32
	nodes []node // nodes[0] is the list sentinel
	cap   int
	free  []int32
}

// New returns a cache holding up to blocks blocks.
func New(blocks int) *LRU {
	c := &LRU{}
	per := (blocks + nShards - 1) / nShards
	for i := range c.shards {
		s := &c.shards[i]
		s.cap = per
		s.index = make(map[Key]int32)
		s.nodes = make([]node, 1, min(per, 1024)+1)
		s.nodes[0].prev, s.nodes[0].next = 0, 0
	}
	return c
}

// BlocksForMemPercent converts a share of the machine's memory into a block
// count, reading /proc/meminfo; it returns fallback when that fails.
func BlocksForMemPercent(pct float64, fallback int) int {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return fallback
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) >= 2 && fs[0] == "MemTotal:" {
			kb, err := strconv.ParseInt(fs[1], 10, 64)
			if err != nil {
				return fallback
			}
			return int(float64(kb*1024) * pct / 100 / BlockSize)
		}
	}
	return fallback
}

func (c *LRU) shard(k Key) *shard {
	h := k.Chunk*0x9E3779B97F4A7C15 ^ uint64(k.Index)*0xC2B2AE3D27D4EB4F ^ uint64(k.Vol)*0x165667B19E3779F9
	return &c.shards[h>>60]
}

func (s *shard) unlink(i int32) {
	n := &s.nodes[i]
	s.nodes[n.prev].next = n.next
	s.nodes[n.next].prev = n.prev
}

func (s *shard) pushFront(i int32) {
	n := &s.nodes[i]
	n.prev, n.next = 0, s.nodes[0].next
	s.nodes[n.next].prev = i
	s.nodes[0].next = i
}

// Get copies the cached block into dst (4096 bytes) and reports whether it
// was present. A cache of no capacity counts nothing.
func (c *LRU) Get(k Key, dst []byte) bool {
	s := c.shard(k)
	if s.cap == 0 {
		return false
	}
	s.mu.Lock()
	i, ok := s.index[k]
	if ok {
		copy(dst, s.nodes[i].data)
		s.unlink(i)
		s.pushFront(i)
	}
	s.mu.Unlock()
	if ok {
		c.hits.Add(1)
	} else {
		c.misses.Add(1)
	}
	return ok
}

// Put stores a copy of data (4096 bytes) under k, evicting the least
// recently used block of the shard when full.
func (c *LRU) Put(k Key, data []byte) {
	s := c.shard(k)
	if s.cap == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if i, ok := s.index[k]; ok {
		s.unlink(i)
		s.pushFront(i)
		return
	}
	var i int32
	switch {
	case len(s.free) > 0:
		i = s.free[len(s.free)-1]
		s.free = s.free[:len(s.free)-1]
	case len(s.nodes)-1 < s.cap:
		s.nodes = append(s.nodes, node{data: make([]byte, BlockSize)})
		i = int32(len(s.nodes) - 1)
	default:
		i = s.nodes[0].prev // least recently used
		s.unlink(i)
		delete(s.index, s.nodes[i].key)
	}
	n := &s.nodes[i]
	n.key = k
	copy(n.data, data)
	s.index[k] = i
	s.pushFront(i)
}

// Cap is the cache's capacity in blocks.
func (c *LRU) Cap() int { return c.shards[0].cap * nShards }

// Len is the number of cached blocks.
func (c *LRU) Len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		n += len(s.index)
		s.mu.Unlock()
	}
	return n
}

// Stats returns hit and miss counts.
func (c *LRU) Stats() (hits, misses uint64) { return c.hits.Load(), c.misses.Load() }
