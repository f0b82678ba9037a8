package vbplugin

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

func TestCheckForeground(t *testing.T) {
	env := func(string) string { return "" }
	cases := []struct {
		argv string
		ok   bool
	}{
		{"nbdkit -f ./p.so volume=a", true},
		{"nbdkit --foreground ./p.so", true},
		{"nbdkit --no-fork ./p.so", true},
		{"nbdkit -fv ./p.so", true},
		{"nbdkit -vf ./p.so", true},
		{"nbdkit -s ./p.so", true},
		{"nbdkit -U /tmp/s -f p.so", true},
		{"nbdkit --unix /tmp/f -f p.so", true},
		{"nbdkit --unix=/tmp/x --run 'qemu-img info $nbd' p.so", true},
		{"nbdkit --exit-with-parent p.so", true},
		{"nbdkit p.so volume=a", false},
		{"nbdkit -U /tmp/s p.so -f", false},
		{"nbdkit -U f p.so", false},
		{"nbdkit -P pid -v p.so", false},
		{"nbdkit -Pf p.so", false},
		{"nbdkit -v --filter=log p.so", false},
		{"nbdkit --filter log p.so", false},
	}
	for _, c := range cases {
		err := CheckForeground(splitArgs(c.argv), 1, env)
		if (err == nil) != c.ok {
			t.Errorf("%q: err = %v, want ok=%v", c.argv, err, c.ok)
		}
	}
	if err := CheckForeground([]string{"nbdkit", "p.so"}, 7, func(k string) string { return map[string]string{"LISTEN_PID": "7"}[k] }); err != nil {
		t.Errorf("socket activation: %v", err)
	}
	if err := CheckForeground(nil, 1, env); err != nil {
		t.Errorf("unknown argv: %v", err)
	}
	for argv, want := range map[string]bool{
		"nbdkit -f -r p.so": true, "nbdkit -fr p.so": true, "nbdkit --readonly -f p.so": true,
		"nbdkit -f p.so": false, "nbdkit -f -U r p.so": false, "nbdkit -f p.so -r": false,
	} {
		if got := ReadOnlyServer(splitArgs(argv)); got != want {
			t.Errorf("ReadOnlyServer(%q) = %v", argv, got)
		}
	}
	for argv, want := range map[string]int{
		"nbdkit -f p.so": DefaultThreads, "nbdkit -f --threads 4 p.so": 4, "nbdkit -f --threads=3 p.so": 3,
		"nbdkit -f -t 5 p.so": 5, "nbdkit -ft6 p.so": 6, "nbdkit -t 2 -f -t 7 p.so": 7,
		"nbdkit -f p.so -t 2": DefaultThreads, "nbdkit -f -U t p.so": DefaultThreads,
		"nbdkit -f --threads 0 p.so": DefaultThreads, "nbdkit -f --threads x p.so": DefaultThreads,
		"nbdkit -f --threads": DefaultThreads,
	} {
		if got := ServerThreads(splitArgs(argv)); got != want {
			t.Errorf("ServerThreads(%q) = %d, want %d", argv, got, want)
		}
	}
}

// splitArgs splits on spaces, keeping '...' together.
func splitArgs(s string) []string {
	var out []string
	var cur []byte
	quoted := false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\'':
			quoted = !quoted
		case c == ' ' && !quoted:
			if len(cur) > 0 {
				out = append(out, string(cur))
				cur = nil
			}
		default:
			cur = append(cur, c)
		}
	}
	if len(cur) > 0 {
		out = append(out, string(cur))
	}
	return out
}

func TestConfig(t *testing.T) {
	var c Config
	for k, v := range map[string]string{"volume": "v1", "cache": "10%", "size": "1GiB", "readonly": "false", "drain_interval": "2s"} {
		if err := c.Set(k, v); err != nil {
			t.Fatalf("%s=%s: %v", k, v, err)
		}
	}
	env := map[string]string{EnvStore: "mem://x", EnvWALDir: "/tmp/w"}
	if err := c.Complete(func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	if c.Store != "mem://x" || c.WALDir != "/tmp/w" || c.CacheMemPercent != 10 || c.Size != 1<<30 {
		t.Fatalf("config %+v", c)
	}
	bad := map[string]string{"cache": "0", "size": "12XB", "readonly": "maybe", "bogus": "1", "drain_interval": "-1s", "volume": ""}
	for k, v := range bad {
		var c Config
		if err := c.Set(k, v); err == nil {
			t.Errorf("%s=%s accepted", k, v)
		}
	}
	for v, want := range map[string]int64{"64MiB": 64 << 20, "0": -1} {
		var w Config
		if err := w.Set("wal_defer", v); err != nil || w.WALDefer != want {
			t.Errorf("wal_defer=%s: %d, %v; want %d", v, w.WALDefer, err, want)
		}
	}
	var wb Config
	if err := wb.Set("wal_defer", "-1MiB"); err == nil {
		t.Error("wal_defer=-1MiB accepted")
	}
	var d Config
	d.Set("cache", "256MiB")
	if d.CacheBlocks != 65536 {
		t.Errorf("cache=256MiB: %d blocks", d.CacheBlocks)
	}
	if err := d.Set("cache", "1"); err == nil {
		t.Error("duplicate parameter accepted")
	}
	var e Config
	e.Set("volume", "v")
	if err := e.Complete(func(string) string { return "" }); err == nil {
		t.Error("missing store accepted")
	}
	e.Store = "mem://"
	if err := e.Complete(func(string) string { return "" }); err == nil {
		t.Error("missing wal_dir accepted for a writable volume")
	}
	e.ReadOnly = true
	if err := e.Complete(func(string) string { return "" }); err != nil {
		t.Errorf("read-only without wal_dir: %v", err)
	}
}

// memStoreSeq numbers the memory stores of memStore.
var memStoreSeq atomic.Int64

// memStore returns the URL of a memory store of t's own. Named memory
// stores live as long as the process, so a name reused by a repeated run
// (go test -count=N) would find the volumes the previous run left.
func memStore(t *testing.T) string {
	return fmt.Sprintf("mem://%s-%d", t.Name(), memStoreSeq.Add(1))
}

func newPlugin(t *testing.T, store string, size string) *Plugin {
	t.Helper()
	p := New(nil)
	for k, v := range map[string]string{"volume": "vol", "store": store, "wal_dir": t.TempDir(), "size": size} {
		if v == "" {
			continue
		}
		if err := p.Cfg.Set(k, v); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Cfg.Complete(nil); err != nil {
		t.Fatal(err)
	}
	if err := p.GetReady(context.Background()); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestOperations(t *testing.T) {
	store := memStore(t)
	p := newPlugin(t, store, "1MiB")
	c1, _ := p.Open(false)
	c2, _ := p.Open(false)
	if c1.Size() != 1<<20 {
		t.Fatalf("size %d", c1.Size())
	}
	data := bytes.Repeat([]byte("viperblock!"), 1000)
	if err := c1.Pwrite(data, 12345, true); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if err := c2.Pread(got, 12345); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back: %v", err)
	}
	if err := c1.Zero(5000, 12345+100, false); err != nil {
		t.Fatal(err)
	}
	c2.Pread(got, 12345)
	if !bytes.Equal(got[100:5100], make([]byte, 5000)) || !bytes.Equal(got[:100], data[:100]) || !bytes.Equal(got[5100:], data[5100:]) {
		t.Fatal("zero range wrong")
	}
	var ext []string
	err := c1.Extents(1<<20, 0, false, func(off, n uint64, hole bool) error {
		ext = append(ext, fmt.Sprintf("%d+%d:%v", off, n, hole))
		return nil
	})
	if err != nil || len(ext) < 3 || ext[0] != "0+12288:true" {
		t.Fatalf("extents %v %v", ext, err)
	}
	// Errors map to the errno a client expects.
	if err := c1.Pwrite(data, 1<<20-10, false); Errno(err, true) != syscall.ENOSPC {
		t.Errorf("write past end: %v -> %v", err, Errno(err, true))
	}
	if err := c1.Pread(got, 1<<20-10); Errno(err, false) != syscall.EINVAL {
		t.Errorf("read past end: %v -> %v", err, Errno(err, false))
	}
	if err := c1.Pread(got, 1<<63); Errno(err, false) != syscall.EINVAL {
		t.Errorf("read at 2^63: %v", err)
	}
	c1.Close()
	c2.Close() // last connection: drains
	if st := p.Volume().Stats(); st.PendingBytes != 0 {
		t.Errorf("pending after last close: %d", st.PendingBytes)
	}
	if err := p.Cleanup(); err != nil {
		t.Fatal(err)
	}
	// Reopen from the store alone (fresh WAL dir).
	q := newPlugin(t, store, "")
	c, _ := q.Open(true)
	if c.CanWrite() {
		t.Error("read-only connection can write")
	}
	c.Pread(got, 12345)
	if !bytes.Equal(got[:100], data[:100]) || !bytes.Equal(got[5100:], data[5100:]) {
		t.Fatal("data lost across reopen")
	}
	c.Close()
	q.Cleanup()
}

func TestOpenErrors(t *testing.T) {
	store := memStore(t)
	p := New(nil)
	p.Cfg = Config{Volume: "nope", Store: store, WALDir: t.TempDir()}
	if err := p.GetReady(context.Background()); err == nil {
		t.Fatal("opened a missing volume")
	}
	p.Cfg.Store = "ftp://x"
	if err := p.GetReady(context.Background()); err == nil {
		t.Fatal("opened an unknown store")
	}
	// A second writable open with the same WAL dir is refused.
	q := newPlugin(t, store, "1MiB")
	defer q.Cleanup()
	r := New(nil)
	r.Cfg = q.Cfg
	if err := r.GetReady(context.Background()); err == nil {
		t.Fatal("second writable open succeeded")
	}
}

func TestErrno(t *testing.T) {
	cases := map[error]syscall.Errno{
		vb.ErrReadOnly:                    syscall.EROFS,
		fmt.Errorf("x: %w", vb.ErrFenced): syscall.EIO,
		vb.ErrCorrupt:                     syscall.EIO,
		vb.ErrClosed:                      syscall.ESHUTDOWN,
		errors.New("backend down"):        syscall.EIO,
		// A WAL write on a full disk (the engine keeps the errno).
		fmt.Errorf("viperblock: write WAL x: %w", &os.PathError{Op: "write", Path: "x", Err: syscall.ENOSPC}): syscall.ENOSPC,
	}
	for err, want := range cases {
		if got := Errno(err, false); got != want {
			t.Errorf("%v -> %v, want %v", err, got, want)
		}
	}
}

func TestRedact(t *testing.T) {
	if got := Redact("s3://key:secret@bucket/prefix?secret_key=abc"); got != "s3://bucket/prefix" {
		t.Errorf("Redact = %q", got)
	}
}

// resume_only=: parsed, incompatible with size=, passed to the engine: a
// server restarted after a crash reopens its own WAL, and is refused with
// vb.ErrNotOwner (the cgo layer's ExitNotOwner) once another owner has the
// volume.
func TestResumeOnly(t *testing.T) {
	var c Config
	if err := c.Set("resume_only", "true"); err != nil || !c.ResumeOnly {
		t.Fatalf("resume_only=true: %v, %+v", err, c)
	}
	if err := (&Config{}).Set("resume_only", "maybe"); err == nil {
		t.Error("resume_only=maybe accepted")
	}
	c.Set("volume", "v")
	c.Set("size", "1MiB")
	if err := c.Complete(func(string) string { return "/x" }); err == nil {
		t.Error("resume_only=true with size= accepted")
	}

	ctx := context.Background()
	store := memStore(t)
	p := newPlugin(t, store, "1MiB")
	conn, _ := p.Open(false)
	if err := conn.Pwrite(bytes.Repeat([]byte{7}, vb.BlockSize), 0, true); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	if err := p.Cleanup(); err != nil { // the server stops
		t.Fatal(err)
	}

	resume := func() (*Plugin, error) {
		q := New(nil)
		q.Cfg = Config{Volume: "vol", Store: store, WALDir: p.Cfg.WALDir}
		if err := q.Cfg.Set("resume_only", "1"); err != nil {
			t.Fatal(err)
		}
		return q, q.GetReady(ctx)
	}
	q, err := resume()
	if err != nil {
		t.Fatalf("resume by the stopped server's WAL: %v", err)
	}
	got := make([]byte, vb.BlockSize)
	qc, _ := q.Open(false)
	if err := qc.Pread(got, 0); err != nil || got[0] != 7 {
		t.Fatalf("resumed server lost the write (%v)", err)
	}
	qc.Close()
	if err := q.Cleanup(); err != nil {
		t.Fatal(err)
	}

	// Another node takes the volume over: the resume is refused.
	st, err := backend.Open(ctx, store)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	other, err := vb.Open(ctx, st, "vol", vb.Options{WALDir: t.TempDir(), CacheBlocks: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := resume(); !errors.Is(err, vb.ErrNotOwner) || !strings.Contains(err.Error(), "resume_only") {
		t.Fatalf("resume after a takeover: %v, want vb.ErrNotOwner explained", err)
	}
	if inf, err := vb.Inspect(ctx, st, "vol"); err != nil || inf.Epoch != other.Epoch() {
		t.Fatalf("store epoch %d (%v), want the new owner's %d", inf.Epoch, err, other.Epoch())
	}
}

// standby= and handoff_timeout= parse, and standby excludes the options of
// an open that creates or only resumes.
func TestConfigStandby(t *testing.T) {
	var c Config
	for k, v := range map[string]string{"volume": "v", "store": "mem://x", "wal_dir": "/tmp/w", "standby": "true", "handoff_timeout": "3s"} {
		if err := c.Set(k, v); err != nil {
			t.Fatalf("%s=%s: %v", k, v, err)
		}
	}
	if err := c.Complete(func(string) string { return "" }); err != nil {
		t.Fatal(err)
	}
	if !c.Standby || c.HandoffTimeout != 3*time.Second {
		t.Fatalf("config %+v", c)
	}
	for _, kv := range [][2]string{{"standby", "maybe"}, {"handoff_timeout", "0s"}, {"handoff_timeout", "soon"}, {"handoff_timeout", "2h"}} {
		var c Config
		if err := c.Set(kv[0], kv[1]); err == nil {
			t.Errorf("%s=%s accepted", kv[0], kv[1])
		}
	}
	for _, other := range [][2]string{{"readonly", "true"}, {"resume_only", "true"}, {"size", "1GiB"}} {
		var c Config
		for k, v := range map[string]string{"volume": "v", "store": "mem://x", "wal_dir": "/tmp/w", "standby": "true", other[0]: other[1]} {
			if err := c.Set(k, v); err != nil {
				t.Fatal(err)
			}
		}
		if err := c.Complete(func(string) string { return "" }); err == nil || !strings.Contains(err.Error(), "standby") {
			t.Errorf("standby with %s=%s: %v", other[0], other[1], err)
		}
	}
}

// A standby plugin serves reads from what the owner commits for them,
// takes nothing at a flush, and takes the volume at its first write; the
// old owner's writes fail then.
func TestPluginStandby(t *testing.T) {
	store := memStore(t)
	a := newPlugin(t, store, "1MiB")
	defer a.Cleanup()
	a.AfterFork()
	ca, err := a.Open(false)
	if err != nil {
		t.Fatal(err)
	}
	blk := func(b byte) []byte { return bytes.Repeat([]byte{b}, 4096) }
	if err := ca.Pwrite(blk(1), 0, false); err != nil {
		t.Fatal(err)
	}
	b := New(nil)
	for k, v := range map[string]string{"volume": "vol", "store": store, "wal_dir": t.TempDir(), "standby": "true", "lease_duration": "1s"} {
		if err := b.Cfg.Set(k, v); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Cfg.Complete(nil); err != nil {
		t.Fatal(err)
	}
	if err := b.GetReady(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer b.Cleanup()
	b.AfterFork()
	cb, err := b.Open(false)
	if err != nil {
		t.Fatal(err)
	}
	if cb.Size() != 1<<20 || b.Volume() != nil {
		t.Fatalf("standby: size %d, volume %v", cb.Size(), b.Volume())
	}
	got := make([]byte, 4096)
	if err := cb.Pread(got, 0); err != nil || !bytes.Equal(got, blk(1)) {
		t.Fatalf("read on the standby: %v (stale: %v)", err, !bytes.Equal(got, blk(1)))
	}
	if err := cb.Flush(); err != nil || b.Volume() != nil {
		t.Fatalf("flush on the standby: %v, handed over %v", err, b.Volume() != nil)
	}
	if err := ca.Pwrite(blk(2), 0, true); err != nil {
		t.Fatalf("the owner stopped serving: %v", err)
	}
	if err := cb.Pwrite(blk(3), 4096, false); err != nil {
		t.Fatalf("first write on the standby: %v", err)
	}
	if b.Volume() == nil {
		t.Fatal("the first write did not hand over")
	}
	if err := ca.Pwrite(blk(4), 0, false); Errno(err, true) != syscall.EIO {
		t.Fatalf("the old owner's write after the handoff: %v", err)
	}
	if err := cb.Pread(got, 0); err != nil || !bytes.Equal(got, blk(2)) {
		t.Fatalf("the new owner lost the old owner's last write: %v", err)
	}
	ca.Close()
	cb.Close()
}
