package nbd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestUnalignedIO mirrors random unaligned writes, zeroes and trims from two
// connections in a model and checks every read, then the whole volume after
// a restart from the store alone.
func TestUnalignedIO(t *testing.T) {
	const size = 4 << 20
	h := newHarness(t)
	r := newRand(seed(t))
	s := h.serve("wal-a", fmt.Sprintf("size=%d", size))
	conns := []*client{s.dial(), s.dial()}
	model := make([]byte, size)
	ops := 3000
	if testing.Short() {
		ops = 500
	}
	for i := 0; i < ops; i++ {
		c := conns[r.IntN(len(conns))]
		n := 1 + r.IntN(3*4096)
		off := r.IntN(size - n)
		switch k := r.IntN(10); {
		case k < 5:
			p := make([]byte, n)
			for j := range p {
				p[j] = byte(r.Uint32())
			}
			if err := c.WriteAt(p, uint64(off), k == 0); err != nil {
				t.Fatalf("op %d: write %d+%d: %v", i, off, n, err)
			}
			copy(model[off:], p)
		case k < 6:
			if err := c.Zero(uint64(off), uint32(n)); err != nil {
				t.Fatalf("op %d: zero %d+%d: %v", i, off, n, err)
			}
			clear(model[off : off+n])
		case k < 7:
			if err := c.Trim(uint64(off), uint32(n)); err != nil {
				t.Fatalf("op %d: trim %d+%d: %v", i, off, n, err)
			}
			clear(model[off : off+n]) // our trim reads back as zeros
		default:
			got := make([]byte, n)
			if err := c.ReadAt(got, uint64(off)); err != nil {
				t.Fatalf("op %d: read %d+%d: %v", i, off, n, err)
			}
			if !bytes.Equal(got, model[off:off+n]) {
				t.Fatalf("op %d: read %d+%d differs from what was written", i, off, n)
			}
		}
	}
	checkAll := func(c *client) {
		t.Helper()
		got := make([]byte, size)
		for off := 0; off < size; off += 1 << 20 {
			if err := c.ReadAt(got[off:off+1<<20], uint64(off)); err != nil {
				t.Fatal(err)
			}
		}
		if !bytes.Equal(got, model) {
			for i := range got {
				if got[i] != model[i] {
					t.Fatalf("volume differs from the model at byte %d", i)
				}
			}
		}
	}
	checkAll(conns[0])
	conns[0].Close()
	conns[1].Close()
	s.stop()
	os.RemoveAll(s.walDir)
	checkAll(h.serve("wal-b").dial())
}

// TestMultiConnFlush: writes on four connections, then one FLUSH on a fifth
// makes all of them durable (what can_multi_conn promises); kill -9 right
// after and restart on the same WAL directory.
func TestMultiConnFlush(t *testing.T) {
	const size = 16 << 20
	h := newHarness(t)
	r := newRand(seed(t))
	s := h.serve("wal", fmt.Sprintf("size=%d", size), "drain_interval=1h")
	model := make([]byte, size)
	// Each connection writes its own quarter, in unaligned pieces.
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for k := 0; k < 4; k++ {
		base := k * size / 4
		part := model[base : base+size/4]
		for j := range part {
			part[j] = byte(r.Uint32() | 1)
		}
		c := s.dial()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for off := 0; off < len(part); {
				n := min(len(part)-off, 1000+off%70000)
				if err := c.WriteAt(part[off:off+n], uint64(base+off), false); err != nil {
					errs <- err
					return
				}
				off += n
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if err := s.dial().Flush(); err != nil {
		t.Fatal(err)
	}
	s.kill9()

	s = h.serve("wal")
	c := s.dial()
	got := make([]byte, size)
	for off := 0; off < size; off += 1 << 20 {
		if err := c.ReadAt(got[off:off+1<<20], uint64(off)); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got, model) {
		t.Fatal("writes from other connections were lost although a FLUSH on one connection returned before the crash")
	}
}

// TestBadRequests: I/O past the end fails with the errno NBD clients expect
// and the server keeps serving.
func TestBadRequests(t *testing.T) {
	const size = 1 << 20
	h := newHarness(t)
	s := h.serve("wal", fmt.Sprintf("size=%d", size))
	c := s.dial()
	buf := make([]byte, 8192)
	cases := []struct {
		name string
		do   func() error
		want syscall.Errno
	}{
		{"read past end", func() error { return c.ReadAt(buf, size-100) }, syscall.EINVAL},
		{"read at end", func() error { return c.ReadAt(buf[:1], size) }, syscall.EINVAL},
		{"read at 2^63", func() error { return c.ReadAt(buf, 1<<63) }, syscall.EINVAL},
		{"read at 2^64-4096", func() error { return c.ReadAt(buf, 1<<64-4096) }, syscall.EINVAL},
		{"write past end", func() error { return c.WriteAt(buf, size-100, false) }, syscall.ENOSPC},
		{"write at 2^63", func() error { return c.WriteAt(buf, 1<<63, true) }, syscall.ENOSPC},
		{"zero past end", func() error { return c.Zero(size-4096, 8192) }, syscall.ENOSPC},
		{"trim past end", func() error { return c.Trim(size, 4096) }, syscall.ENOSPC},
	}
	for _, tc := range cases {
		var ne *nbdError
		err := tc.do()
		if !errors.As(err, &ne) {
			t.Fatalf("%s: %v, want an NBD error (and a live connection)", tc.name, err)
		}
		if ne.errno != tc.want && !(tc.want == syscall.ENOSPC && ne.errno == syscall.EINVAL) {
			t.Errorf("%s: errno %v, want %v", tc.name, ne.errno, tc.want)
		}
	}
	// The connection and the server still work.
	if err := c.WriteAt([]byte("still alive"), size-11, true); err != nil {
		t.Fatal(err)
	}
	if err := c.ReadAt(buf[:11], size-11); err != nil || string(buf[:11]) != "still alive" {
		t.Fatalf("read after errors: %q %v", buf[:11], err)
	}
	c.Close()
	s.stop()
}

// TestBadParameters: nbdkit refuses to start, with a clear message.
func TestBadParameters(t *testing.T) {
	h := newHarness(t)
	wal := filepath.Join(h.dir, "wal")
	good := []string{"volume=vol", "store=" + h.store, "wal_dir=" + wal}
	// Create the volume, and keep it served to test the WAL lock.
	live := h.serve("wal", "size=1MiB")
	cases := []struct {
		name   string
		args   []string
		params []string
		want   string
	}{
		{"unknown parameter", nil, append(good[1:], "volume=other", "bogus=1"), `unknown parameter "bogus"`},
		{"missing volume", nil, good[1:], "missing volume"},
		{"invalid name", nil, append(good[1:], "volume=../etc"), "invalid volume name"},
		{"bad size", nil, append(good, "size=12parsecs"), "size=12parsecs"},
		{"zero size", nil, append(good, "size=0"), "size=0"},
		{"bad cache", nil, append(good, "cache=-5"), "cache=-5"},
		{"bad readonly", nil, append(good, "readonly=maybe"), "readonly=maybe"},
		{"unknown store scheme", nil, []string{"volume=vol", "store=ftp://x/y", "wal_dir=" + wal}, "unknown scheme"},
		{"missing store", nil, []string{"volume=vol", "wal_dir=" + wal}, "missing store"},
		{"missing wal_dir", nil, []string{"volume=vol", "store=" + h.store}, "wal_dir"},
		{"missing volume in store", nil, []string{"volume=nope", "store=" + h.store, "wal_dir=" + wal}, "not found"},
		{"volume in use", nil, good, "already open by another process"},
		{"not foreground", []string{"-U", filepath.Join(h.dir, "x.sock")}, good, "foreground"},
	}
	for _, tc := range cases {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			args := tc.args
			if args == nil {
				args = []string{"-f", "-U", filepath.Join(h.dir, "x.sock")}
			}
			args = append(append(args, h.plugin), tc.params...)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, "nbdkit", args...)
			cmd.Env = append(os.Environ(), "VBLOCK_STORE=", "VBLOCK_WAL_DIR=")
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("nbdkit started and exited 0 with %v\n%s", tc.params, out)
			}
			if ctx.Err() != nil {
				t.Fatalf("nbdkit did not fail quickly (it started serving?)\n%s", out)
			}
			if !strings.Contains(string(out), tc.want) {
				t.Fatalf("message does not mention %q:\n%s", tc.want, out)
			}
			t.Logf("%s", bytes.TrimSpace(out))
		})
	}
	live.stop()
}

// TestRelease: a second server opening the volume for writing elsewhere
// (another WAL directory, as another node would) asks the first to release
// it: the first drains everything it acknowledged (flushed or not), fails
// every later write with EIO, and exits 0 when stopped; the second serves
// all of it.
func TestRelease(t *testing.T) {
	h := newHarness(t)
	a := h.serve("wal-a", "size=1MiB", "drain_interval=1h", "lease_duration=2s")
	ca := a.dial()
	if err := ca.WriteAt([]byte("from A"), 0, true); err != nil {
		t.Fatal(err)
	}
	if err := ca.WriteAt([]byte("unflushed A"), 4096, false); err != nil {
		t.Fatal(err)
	}
	b := h.serve("wal-b")
	cb := b.dial()
	if err := cb.WriteAt([]byte("from B"), 8192, true); err != nil {
		t.Fatal(err)
	}
	err := ca.WriteAt([]byte("late A"), 12288, false)
	var ne *nbdError
	if !errors.As(err, &ne) || ne.errno != syscall.EIO {
		t.Fatalf("released owner's write: %v, want EIO", err)
	}
	ca.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := a.Stop(ctx); err != nil {
		t.Errorf("the released server: %v, want exit 0 (nothing was left to drain)", err)
	}
	for off, want := range map[uint64]string{0: "from A", 4096: "unflushed A", 8192: "from B"} {
		buf := make([]byte, len(want))
		cb.ReadAt(buf, off)
		if string(buf) != want {
			t.Errorf("B reads %q at %d, want %q", buf, off, want)
		}
	}
	buf := make([]byte, 6)
	cb.ReadAt(buf, 12288)
	if string(buf) == "late A" {
		t.Error("the released owner's write reached the new owner")
	}
	cb.Close()
	b.stop()
}

// TestFencing is the check leases exist for: owner A is paused (SIGSTOP)
// after a committed write; B waits A's lease out, opens the volume, writes
// and flushes; A is resumed and a write + FLUSH on A must fail (EIO). B's
// flushed write and A's committed write survive, A's late write never
// reaches the store, and A exits non-zero.
func TestFencing(t *testing.T) {
	h := newHarness(t)
	a := h.serve("wal-a", "size=1MiB", "drain_interval=50ms", "lease_duration=2s") // its FUA write must confirm it on a busy disk
	ca := a.dial()
	if err := ca.WriteAt([]byte("from A"), 0, true); err != nil {
		t.Fatal(err)
	}
	h.waitWritten(4096) // A's drain loop committed the write
	if err := syscall.Kill(a.Pid(), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	defer func() {
		if !resumed {
			syscall.Kill(a.Pid(), syscall.SIGCONT)
		}
	}()
	b := h.serve("wal-b")
	cb := b.dial()
	if err := cb.WriteAt([]byte("from B"), 4096, true); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(a.Pid(), syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	resumed = true
	err := ca.WriteAt([]byte("late A"), 8192, false)
	if err == nil {
		err = ca.Flush()
	}
	var ne *nbdError
	if !errors.As(err, &ne) || ne.errno != syscall.EIO {
		t.Fatalf("the resumed stale owner's write + flush: %v, want EIO", err)
	}
	ca.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := a.Stop(ctx); err == nil {
		t.Error("the fenced server exited 0")
	}
	buf := make([]byte, 6)
	cb.ReadAt(buf, 0)
	if string(buf) != "from A" {
		t.Errorf("B reads %q at 0, want A's committed write", buf)
	}
	cb.ReadAt(buf, 4096)
	if string(buf) != "from B" {
		t.Errorf("B reads %q at 4096, want its own flushed write", buf)
	}
	cb.ReadAt(buf, 8192)
	if string(buf) == "late A" {
		t.Error("the fenced owner's write reached the new owner")
	}
	cb.Close()
	b.stop()
	if got := h.readVolume(16384); bytes.Contains(got, []byte("late A")) {
		t.Error("the fenced owner's write reached the store")
	}
}

// TestStoreDurability: with durability=store a write confirmed by FUA
// survives the loss of its node (nbdkit killed, its WAL directory gone):
// the next node, once the lease has expired, adopts the store log.
func TestStoreDurability(t *testing.T) {
	h := newHarness(t)
	a := h.serve("wal-a", "size=1MiB", "drain_interval=1h", "lease_duration=2s", "durability=store") // its FUA writes must confirm it on a busy disk
	ca := a.dial()
	if err := ca.WriteAt([]byte("confirmed"), 0, true); err != nil {
		t.Fatal(err)
	}
	if err := ca.WriteAt([]byte("flushed"), 4096, false); err != nil {
		t.Fatal(err)
	}
	if err := ca.Flush(); err != nil {
		t.Fatal(err)
	}
	ca.Close()
	a.kill9()
	if err := os.RemoveAll(a.walDir); err != nil {
		t.Fatal(err)
	}
	b := h.serve("wal-b")
	cb := b.dial()
	for off, want := range map[uint64]string{0: "confirmed", 4096: "flushed"} {
		buf := make([]byte, len(want))
		if err := cb.ReadAt(buf, off); err != nil {
			t.Fatal(err)
		}
		if string(buf) != want {
			t.Errorf("after the node was lost, %d reads %q, want %q", off, buf, want)
		}
	}
	cb.Close()
	b.stop()
}
