package viperblock_test

// A full WAL disk: the WAL write that hits ENOSPC fails with it, reads go
// on, writes succeed again once there is room (no reopen), the file never
// keeps a torn record in the middle of a segment, Close still drains, and
// the OWNER file can be written from the directory's reserve. A failed
// fsync stays sticky.

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/viperblock/viperblock-csi/internal/testutil"
	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/vfs"
)

// fullDisk is an error-injecting filesystem whose WAL directory can be
// made "full": creates and writes there fail with ENOSPC (a write stores
// part of its data first, as a write running out of space part-way does).
type fullDisk struct {
	mu      sync.Mutex
	full    bool // guarded by mu
	partial int  // guarded by mu: bytes a failing write stores first
	syncErr bool // guarded by mu: the next fsync of a segment fails
	freed   bool // guarded by mu: removing the reserve makes room
}

func (d *fullDisk) set(full bool) { d.mu.Lock(); d.full = full; d.mu.Unlock() }

func (d *fullDisk) inject(op vfs.Op, name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if op == vfs.OpRemove && filepath.Base(name) == "RESERVE" && d.freed {
		d.full = false
		return nil
	}
	if op == vfs.OpSync && d.syncErr && strings.HasSuffix(name, ".wal") {
		d.syncErr = false
		return syscall.EIO
	}
	if !d.full || !strings.Contains(name, "/wal/") {
		return nil
	}
	switch op {
	case vfs.OpCreate:
		return syscall.ENOSPC
	case vfs.OpWrite:
		return &vfs.PartialWrite{N: d.partial, Err: syscall.ENOSPC}
	}
	return nil
}

func fullDiskOpts(t *testing.T, d *fullDisk) vb.Options {
	o := quietOpts(t)
	o.WALDir = filepath.Join(t.TempDir(), "wal")
	o.FS = vfs.Error(vfs.Default, d.inject)
	return o
}

func block(b byte) []byte { return bytes.Repeat([]byte{b}, vb.BlockSize) }

func wantBlock(t *testing.T, v *vb.Volume, blk int64, b byte) {
	t.Helper()
	got := make([]byte, vb.BlockSize)
	if _, err := v.ReadAt(got, blk*vb.BlockSize); err != nil || !bytes.Equal(got, block(b)) {
		t.Fatalf("block %d: %v, holds %x, want %x", blk, err, got[0], b)
	}
}

func TestWALOutOfSpace(t *testing.T) {
	for _, partial := range []int{0, 100, 5000} {
		t.Run(map[int]string{0: "nothing-stored", 100: "torn-header", 5000: "torn-payload"}[partial], func(t *testing.T) {
			testWALOutOfSpace(t, partial)
		})
	}
}

func testWALOutOfSpace(t *testing.T, partial int) {
	ctx := context.Background()
	s := backend.NewMem()
	d := &fullDisk{partial: partial}
	o := fullDiskOpts(t, d)
	if err := vb.CreateOnly(ctx, s, "v", 64*vb.BlockSize); err != nil {
		t.Fatal(err)
	}
	v, err := vb.Open(ctx, s, "v", o)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.WriteAt(block(0xa), 0); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}

	d.set(true)
	// Blocks 0, 16 and 32 share shard 0: the failed write lands in the
	// segment file that holds the flushed record, after it.
	if _, err := v.WriteAt(block(0xb), 16*vb.BlockSize); err != nil {
		t.Fatalf("write before the WAL knows the disk is full: %v", err)
	}
	if err := v.Flush(); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("flush on a full disk: %v, want ENOSPC", err)
	}
	if _, err := v.WriteAt(block(0xc), 32*vb.BlockSize); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("write on a full disk: %v, want ENOSPC", err)
	}
	wantBlock(t, v, 0, 0xa)
	wantBlock(t, v, 16, 0xb)
	if err := v.Flush(); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("second flush on a full disk: %v, want ENOSPC", err)
	}

	// Room again: writes and flushes succeed, no reopen.
	d.set(false)
	if _, err := v.WriteAt(block(0xc), 32*vb.BlockSize); err != nil {
		t.Fatalf("write once there is room: %v", err)
	}
	if err := v.Flush(); err != nil {
		t.Fatalf("flush once there is room: %v", err)
	}
	// A crash now: the WAL replays every flushed write, and finds no torn
	// record before a good one.
	vb.ForgetForTest(v)
	v, err = vb.Open(ctx, s, "v", o)
	if err != nil {
		t.Fatalf("reopen after the disk was full: %v", err)
	}
	if st := v.Stats(); st.Replayed != 3 {
		t.Fatalf("replayed %d records, want 3", st.Replayed)
	}
	wantBlock(t, v, 0, 0xa)
	wantBlock(t, v, 16, 0xb)
	wantBlock(t, v, 32, 0xc)
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
}

// Close drains from memory when only WAL writes failed.
func TestWALOutOfSpaceCloseDrains(t *testing.T) {
	ctx := context.Background()
	s := backend.NewMem()
	d := &fullDisk{partial: 64}
	o := fullDiskOpts(t, d)
	if err := vb.CreateOnly(ctx, s, "v", 64*vb.BlockSize); err != nil {
		t.Fatal(err)
	}
	v, err := vb.Open(ctx, s, "v", o)
	if err != nil {
		t.Fatal(err)
	}
	d.set(true)
	if _, err := v.WriteAt(block(0xd), 0); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("flush on a full disk: %v, want ENOSPC", err)
	}
	if err := v.Close(); err != nil {
		t.Fatalf("close with only WAL writes failed: %v, want a drain", err)
	}
	r, err := vb.Open(ctx, s, "v", vb.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	wantBlock(t, r, 0, 0xd)
	if inf, err := vb.Inspect(ctx, s, "v"); err != nil || inf.Open {
		t.Fatalf("volume still open after close: %+v %v", inf, err)
	}
}

// A failed fsync is sticky: the page cache state is unknown.
func TestWALFsyncFailureSticky(t *testing.T) {
	ctx := context.Background()
	s := backend.NewMem()
	d := &fullDisk{syncErr: true}
	o := fullDiskOpts(t, d)
	if err := vb.CreateOnly(ctx, s, "v", 64*vb.BlockSize); err != nil {
		t.Fatal(err)
	}
	v, err := vb.Open(ctx, s, "v", o)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if _, err := v.WriteAt(block(1), 0); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("flush with a failing fsync: %v, want EIO", err)
	}
	if _, err := v.WriteAt(block(2), 0); !errors.Is(err, syscall.EIO) {
		t.Fatalf("write after a failed fsync: %v, want the sticky EIO", err)
	}
	if err := v.Flush(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("flush after a failed fsync: %v, want the sticky EIO", err)
	}
	wantBlock(t, v, 0, 1)
}

// The OWNER file is written from the reserve when the disk is full, so the
// volume can be opened again (restaged) on this node.
func TestOwnerReserve(t *testing.T) {
	ctx := context.Background()
	s := backend.NewMem()
	d := &fullDisk{freed: true}
	o := fullDiskOpts(t, d)
	if err := vb.CreateOnly(ctx, s, "v", 64*vb.BlockSize); err != nil {
		t.Fatal(err)
	}
	v, err := vb.Open(ctx, s, "v", o)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	reserve := filepath.Join(o.WALDir, "v", "RESERVE")
	if f, err := vfs.Default.Open(reserve); err != nil {
		t.Fatalf("no reserve after an open: %v", err)
	} else {
		f.Close()
	}
	d.set(true)
	v, err = vb.Open(ctx, s, "v", o)
	if err != nil {
		t.Fatalf("open on a full disk: %v", err)
	}
	if v.Epoch() != 2 {
		t.Fatalf("epoch %d, want 2", v.Epoch())
	}
	epoch, nonce, err := vb.Owner(ctx, s, "v")
	if err != nil || epoch != v.Epoch() {
		t.Fatalf("owner %d (%v), want %d", epoch, err, v.Epoch())
	}
	owned, found, err := vb.WALOwnedBy(nil, o.WALDir, "v", epoch, nonce)
	if err != nil || !found || !owned {
		t.Fatalf("OWNER after an open on a full disk: owned %v found %v %v", owned, found, err)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	// The reserve was made again once the OWNER write had made room.
	if f, err := vfs.Default.Open(reserve); err != nil {
		t.Fatalf("reserve not made again: %v", err)
	} else {
		f.Close()
	}
	// Without a reserve to spend, a full disk fails the open.
	d.mu.Lock()
	d.freed = false
	d.mu.Unlock()
	d.set(true)
	if _, err := vb.Open(ctx, s, "v", o); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("open on a full disk with the reserve unable to help: %v, want ENOSPC", err)
	}
}

// loopFS mounts a small ext4 filesystem and returns its mount point.
func loopFS(t *testing.T, size string) string {
	t.Helper()
	testutil.NeedRoot(t)
	testutil.NeedCommands(t, "truncate", "mkfs.ext4", "mount", "umount")
	dir := t.TempDir()
	img, mnt := filepath.Join(dir, "img"), filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, c := range [][]string{{"truncate", "-s", size, img}, {"mkfs.ext4", "-q", "-m", "0", img}, {"mount", "-o", "loop", img, mnt}} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Skipf("%v: %v: %s", c, err, out) // no loop devices here
		}
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	return mnt
}

// fillDisk appends to the file path until the filesystem is full.
func fillDisk(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	for _, n := range []int{4096, 512, 1} { // the last partial blocks too
		for {
			if _, err := f.Write(buf[:n]); err != nil {
				break
			}
		}
	}
}

// writeBlocks writes n blocks tagged b from block first (all in memory).
func writeBlocks(v *vb.Volume, b byte, first, n int64) error {
	for i := first; i < first+n; i++ {
		if _, err := v.WriteAt(block(b), i*vb.BlockSize); err != nil {
			return err
		}
	}
	return nil
}

// The WAL's own (real, small) filesystem fills up: flushes and then writes
// fail with ENOSPC, reads work, Close drains, the volume opens again on the
// full disk (the OWNER reserve), and once space is freed writes and
// flushes succeed without a reopen and everything flushed is in the store.
func TestWALDiskFullLoop(t *testing.T) {
	if testing.Short() {
		t.Skip("mounts a loop filesystem; skipped with -short")
	}
	mnt := loopFS(t, "32M")
	ctx := context.Background()
	s := backend.NewMem()
	if err := vb.CreateOnly(ctx, s, "v", 4096*vb.BlockSize); err != nil {
		t.Fatal(err)
	}
	o := quietOpts(t)
	o.WALDir = filepath.Join(mnt, "wal")
	filler := filepath.Join(mnt, "filler")
	v, err := vb.Open(ctx, s, "v", o)
	if err != nil {
		t.Fatal(err)
	}
	if err := writeBlocks(v, 1, 0, 8); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}

	fillDisk(t, filler)
	if err := writeBlocks(v, 2, 100, 64); err != nil {
		t.Fatalf("writes into memory on a full disk: %v", err)
	}
	if err := v.Flush(); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("flush on a full disk: %v, want ENOSPC", err)
	}
	if _, err := v.WriteAt(block(3), 200*vb.BlockSize); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("write on a full disk: %v, want ENOSPC", err)
	}
	wantBlock(t, v, 0, 1)
	wantBlock(t, v, 163, 2)
	if err := v.Close(); err != nil {
		t.Fatalf("close on a full disk: %v, want a drain from memory", err)
	}

	// Restage on the still-full disk: the OWNER file comes from the reserve.
	fillDisk(t, filler)
	v, err = vb.Open(ctx, s, "v", o)
	if err != nil {
		t.Fatalf("open on a full disk: %v", err)
	}
	wantBlock(t, v, 0, 1)
	wantBlock(t, v, 163, 2)
	fillDisk(t, filler)
	if err := writeBlocks(v, 4, 300, 64); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("flush on a full disk after reopening: %v, want ENOSPC", err)
	}
	if _, err := v.WriteAt(block(5), 400*vb.BlockSize); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("write on a full disk after reopening: %v, want ENOSPC", err)
	}

	// Space returns: writes and flushes work again, no reopen.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if err := writeBlocks(v, 5, 400, 64); err != nil {
		t.Fatalf("write once space returned: %v", err)
	}
	if err := v.Flush(); err != nil {
		t.Fatalf("flush once space returned: %v", err)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	r, err := vb.Open(ctx, s, "v", vb.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for _, c := range []struct {
		blk int64
		b   byte
	}{{0, 1}, {7, 1}, {100, 2}, {163, 2}, {300, 4}, {363, 4}, {400, 5}, {463, 5}} {
		wantBlock(t, r, c.blk, c.b)
	}
}
