package cache

import (
	"bytes"
	"testing"
)

func block(b byte) []byte { return bytes.Repeat([]byte{b}, BlockSize) }

func TestLRU(t *testing.T) {
	c := New(16 * 4) // 4 per shard
	buf := make([]byte, BlockSize)
	for i := 0; i < 1000; i++ {
		c.Put(Key{Chunk: 1, Index: uint32(i)}, block(byte(i)))
	}
	if n := c.Len(); n > 64 {
		t.Fatalf("holds %d blocks, capacity 64", n)
	}
	// The most recent blocks are present and intact.
	if !c.Get(Key{Chunk: 1, Index: 999}, buf) || !bytes.Equal(buf, block(byte(999%256))) {
		t.Fatal("most recent block missing or wrong")
	}
	if c.Get(Key{Chunk: 1, Index: 0}, buf) {
		t.Fatal("oldest block not evicted")
	}
	// A Get refreshes: within one shard, the refreshed key outlives others.
	d := New(16)
	var same []Key
	for i := uint32(0); len(same) < 3; i++ {
		k := Key{Chunk: 7, Index: i}
		if d.shard(k) == d.shard(Key{Chunk: 7, Index: 0}) {
			same = append(same, k)
		}
	}
	d.Put(same[0], block(1))
	d.Get(same[0], buf)
	d.Put(same[1], block(2)) // capacity 1 per shard: evicts same[0]
	if d.Get(same[0], buf) || !d.Get(same[1], buf) {
		t.Fatal("eviction order wrong")
	}
	hits, misses := d.Stats()
	if hits == 0 || misses == 0 {
		t.Fatalf("stats %d/%d", hits, misses)
	}
	off := New(-1)
	off.Put(Key{}, block(1))
	if off.Get(Key{}, buf) || off.Cap() != 0 {
		t.Fatal("disabled cache stored a block")
	}
}
