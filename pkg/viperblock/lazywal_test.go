package viperblock

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/vfs"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/wal"
)

func lazyVolume(t *testing.T, fs vfs.FS, st backend.Store, o Options) *Volume {
	t.Helper()
	ctx := context.Background()
	if err := CreateOnly(ctx, st, "lazy", 64<<20); err != nil {
		t.Fatal(err)
	}
	o.WALDir, o.FS, o.Logger = "/wal", fs, quietLogger()
	o.DrainInterval = time.Hour
	o.Compaction.Disabled = true
	v, err := Open(ctx, st, "lazy", o)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func pattern(seed byte, n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = seed + byte(i/BlockSize)*7 + byte(i)
	}
	return p
}

// Data a drain commits before any Flush asked for it is never written to
// the WAL; data a Flush covered is, exactly once; reads see every write
// throughout, and a reopen after a crash finds what was committed.
func TestDrainSkipsUnflushedWALWrites(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewMem()
	st := backend.NewMem()
	v := lazyVolume(t, fs, st, Options{})
	const n = 4 << 20
	records := uint64(n / BlockSize * wal.BlockRecordLen)
	a := pattern(1, n)
	if _, err := v.WriteAt(a, 0); err != nil {
		t.Fatal(err)
	}
	s := v.Stats()
	if s.WALBytesWritten != 0 || s.WALUnwrittenBytes != int64(records) {
		t.Fatalf("before the drain: %d WAL bytes written, %d unwritten; want 0 and %d", s.WALBytesWritten, s.WALUnwrittenBytes, records)
	}
	got := make([]byte, n)
	if _, err := v.ReadAt(got, 0); err != nil || !bytes.Equal(got, a) {
		t.Fatalf("read before the drain: %v (equal %v)", err, bytes.Equal(got, a))
	}
	if err := v.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	s = v.Stats()
	if s.WALBytesWritten != 0 || s.WALBytesSkipped != records || s.WALUnwrittenBytes != 0 {
		t.Fatalf("after the drain: written %d, skipped %d, unwritten %d; want 0, %d, 0", s.WALBytesWritten, s.WALBytesSkipped, s.WALUnwrittenBytes, records)
	}
	if _, err := v.ReadAt(got, 0); err != nil || !bytes.Equal(got, a) {
		t.Fatalf("read after the drain: %v (equal %v)", err, bytes.Equal(got, a))
	}

	// A flushed write goes to the WAL once; its drain skips nothing.
	b := pattern(2, n)
	if _, err := v.WriteAt(b, n); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	if s := v.Stats(); s.WALBytesWritten != records || s.WALUnwrittenBytes != 0 {
		t.Fatalf("after the flush: written %d, unwritten %d; want %d, 0", s.WALBytesWritten, s.WALUnwrittenBytes, records)
	}
	if err := v.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	if s := v.Stats(); s.WALBytesWritten != records || s.WALBytesSkipped != records {
		t.Fatalf("after the second drain: written %d, skipped %d; want %d each", s.WALBytesWritten, s.WALBytesSkipped, records)
	}

	// A write flushed, then overwritten and trimmed in part without a
	// flush, then drained: a crash after the drain finds the committed
	// state, whatever the WAL holds.
	c := pattern(3, n)
	if _, err := v.WriteAt(c, 2*n); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	d := pattern(4, n)
	if _, err := v.WriteAt(d, 2*n); err != nil {
		t.Fatal(err)
	}
	if err := v.Trim(2*n, n/2); err != nil {
		t.Fatal(err)
	}
	if err := v.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	v.abandon()
	v2, err := Open(ctx, st, "lazy", Options{WALDir: "/wal", FS: fs.CrashClone(nil), Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer v2.Close()
	want := append(append(append([]byte(nil), a...), b...), make([]byte, n/2)...)
	want = append(want, d[n/2:]...)
	got = make([]byte, 3*n)
	if _, err := v2.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("after a crash and a reopen: %v (equal %v)", err, bytes.Equal(got, want))
	}
}

// A Flush finds at most about Options.WALDeferBytes to write: the
// writeback writes ahead whatever exceeds it, oldest first.
func TestFlushWritesAtMostTheDeferBound(t *testing.T) {
	const bound = 1 << 20
	v := lazyVolume(t, vfs.NewMem(), backend.NewMem(), Options{DrainBytes: 64 << 20, MaxPendingBytes: 64 << 20, WALDeferBytes: bound})
	defer v.Close()
	const n = 16 << 20
	for off := 0; off < n; off += 1 << 20 {
		if _, err := v.WriteAt(pattern(byte(off>>20), 1<<20), int64(off)); err != nil {
			t.Fatal(err)
		}
	}
	records := int64(n / BlockSize * wal.BlockRecordLen)
	deadline := time.Now().Add(20 * time.Second)
	for v.Stats().WALUnwrittenBytes > bound {
		if time.Now().After(deadline) {
			t.Fatalf("the writeback left %d bytes unwritten, over the bound of %d", v.Stats().WALUnwrittenBytes, bound)
		}
		time.Sleep(10 * time.Millisecond)
	}
	before := v.Stats()
	if before.WALBytesWritten < uint64(records-bound) {
		t.Fatalf("the writeback wrote %d bytes ahead; want at least %d", before.WALBytesWritten, records-bound)
	}
	if before.WALUnwrittenBytes == 0 {
		t.Fatal("nothing left unwritten: the writeback wrote ahead more than what exceeds the bound")
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	after := v.Stats()
	if d := after.WALBytesWritten - before.WALBytesWritten; d > bound || d != uint64(before.WALUnwrittenBytes) {
		t.Fatalf("the flush wrote %d bytes (%d were unwritten); want at most the bound, %d", d, before.WALUnwrittenBytes, bound)
	}
	if after.WALUnwrittenBytes != 0 || after.WALBytesWritten != uint64(records) {
		t.Fatalf("after the flush: %d written, %d unwritten; want %d and 0", after.WALBytesWritten, after.WALUnwrittenBytes, records)
	}
}

// A negative WALDeferBytes defers nothing: each filled slab is written at
// once, as is the rest at the Flush; a drain then skips nothing.
func TestNoWALDeferral(t *testing.T) {
	v := lazyVolume(t, vfs.NewMem(), backend.NewMem(), Options{WALDeferBytes: -1})
	defer v.Close()
	const n = 8 << 20
	if _, err := v.WriteAt(pattern(5, n), 0); err != nil {
		t.Fatal(err)
	}
	slab := int64(v.slabs.size)
	deadline := time.Now().Add(20 * time.Second)
	// Every shard's last slab may be partly filled, and stays unwritten.
	for v.Stats().WALUnwrittenBytes > nShards*slab {
		if time.Now().After(deadline) {
			t.Fatalf("%d bytes left unwritten with deferral off", v.Stats().WALUnwrittenBytes)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := v.Drain(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s := v.Stats(); s.WALBytesSkipped != 0 || s.WALBytesWritten != n/BlockSize*wal.BlockRecordLen {
		t.Fatalf("written %d, skipped %d; want everything written", s.WALBytesWritten, s.WALBytesSkipped)
	}
}
