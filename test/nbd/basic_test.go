package nbd

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestCapabilities(t *testing.T) {
	needTools(t, "nbdinfo")
	h := newHarness(t)
	s := h.serve("wal", "size=64MiB")
	out := run(t, "nbdinfo", "--json", s.URI())
	var info struct {
		Exports []map[string]any `json:"exports"`
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil || len(info.Exports) != 1 {
		t.Fatalf("nbdinfo --json: %v\n%s", err, out)
	}
	e := info.Exports[0]
	want := map[string]any{
		"export-size": 64.0 * (1 << 20), "is_read_only": false, "is_rotational": false,
		"can_flush": true, "can_fua": true, "can_multi_conn": true, "can_trim": true, "can_zero": true,
		"can_fast_zero": true, "can_cache": true,
		"block_size_minimum": 1.0, "block_size_preferred": 4096.0, "block_size_maximum": 32.0 * (1 << 20),
	}
	for k, v := range want {
		if e[k] != v {
			t.Errorf("%s = %v, want %v", k, e[k], v)
		}
	}
	if !strings.Contains(out, "base:allocation") {
		t.Errorf("no base:allocation meta context (extents)\n%s", out)
	}
	// A fresh volume is one hole; written data shows up as data.
	if m := run(t, "nbdinfo", "--map", s.URI()); !strings.Contains(m, "hole,zero") || strings.Contains(m, "data") {
		t.Errorf("fresh volume map:\n%s", m)
	}
	c := s.dial()
	if err := c.WriteAt(bytes.Repeat([]byte{1}, 8192), 1<<20, false); err != nil {
		t.Fatal(err)
	}
	m := run(t, "nbdinfo", "--map", s.URI())
	if !strings.Contains(m, "1048576        8192    0  data") {
		t.Errorf("map after an 8 KiB write at 1 MiB:\n%s", m)
	}
	// Trimmed blocks are holes again.
	if err := c.Trim(1<<20, 8192); err != nil {
		t.Fatal(err)
	}
	if m := run(t, "nbdinfo", "--map", s.URI()); strings.Contains(m, "data") {
		t.Errorf("map after trim:\n%s", m)
	}
	// A read-only server says so and refuses writes.
	c.Close()
	s.stop()
	ro := h.serve("", "readonly=true")
	out = run(t, "nbdinfo", "--json", ro.URI())
	if !strings.Contains(out, `"is_read_only": true`) {
		t.Errorf("readonly=true: not read-only\n%s", out)
	}
	rc := ro.dial()
	var ne *nbdError
	if err := rc.WriteAt(make([]byte, 512), 0, false); !errors.As(err, &ne) || ne.errno != syscall.EPERM {
		t.Errorf("write to a read-only export: %v, want EPERM", err)
	}
	rc.Close()
	ro.stop()
	// nbdkit -r opens the volume without ownership: no WAL, epoch unchanged.
	r2, err := h.start("", []string{"-r"})
	if err != nil {
		t.Fatal(err)
	}
	if out := run(t, "nbdinfo", "--json", r2.URI()); !strings.Contains(out, `"is_read_only": true`) {
		t.Errorf("nbdkit -r: not read-only\n%s", out)
	}
	if !strings.Contains(r2.Output(), "readonly=true") {
		t.Errorf("nbdkit -r did not open the volume read-only:\n%s", r2.Output())
	}
	r2.stop()
}

// TestNbdcopyRoundTrip writes 256 MiB of random data with nbdcopy, reads it
// back, stops, and reads it again from the store alone (a fresh WAL).
func TestNbdcopyRoundTrip(t *testing.T) {
	needTools(t, "nbdcopy")
	size := int64(256 << 20)
	if testing.Short() {
		size = 32 << 20
	}
	h := newHarness(t)
	r := newRand(seed(t))
	src := randomFile(t, h.dir, size, r)
	s := h.serve("wal-a", "size=384MiB")
	run(t, "nbdcopy", "--flush", src, s.URI())
	back := filepath.Join(h.dir, "back.img")
	run(t, "nbdcopy", s.URI(), back)
	sameFilePrefix(t, src, back, size)
	if st, _ := os.Stat(back); st.Size() != 384<<20 {
		t.Fatalf("exported %d bytes", st.Size())
	}
	s.stop()

	os.RemoveAll(filepath.Join(h.dir, "wal-a"))
	os.Remove(back)
	s = h.serve("wal-b")
	run(t, "nbdcopy", s.URI(), back)
	sameFilePrefix(t, src, back, size)
	tail := make([]byte, 384<<20-size)
	f, _ := os.Open(back)
	defer f.Close()
	f.ReadAt(tail, size)
	if !bytes.Equal(tail, make([]byte, len(tail))) {
		t.Fatal("the unwritten tail of the volume is not zero")
	}
	s.stop()
}

// TestQemuIO writes patterns with qemu-io, discards and zeroes ranges, and
// verifies every range before and after a restart from the store alone.
func TestQemuIO(t *testing.T) {
	needTools(t, "qemu-io")
	h := newHarness(t)
	s := h.serve("wal-a", "size=16MiB")
	qio := func(s *server, cmds ...string) {
		t.Helper()
		args := []string{"-f", "raw"}
		for _, c := range cmds {
			args = append(args, "-c", c)
		}
		out := run(t, "qemu-io", append(args, s.URI())...)
		if strings.Contains(out, "failed") || strings.Contains(out, "error") {
			t.Fatalf("qemu-io: %s", out)
		}
	}
	qio(s,
		"write -P 0xab 0 4M",
		"write -P 0xcd 1M 64k",       // overwrite, aligned
		"write -P 0x11 2097664 3000", // unaligned start and length
		"write -P 0x22 4M 4M",        //
		"discard 5M 1M",              // trim
		"write -z 6M 256k",           // write zeroes
		"write -z 7340544 1000",      // unaligned zeroes
		"write -P 0x33 -f 8M 512k",   // FUA
		"aio_write -P 0x44 9M 1M",    // parallel requests
		"aio_write -P 0x55 10M 1M", "aio_flush",
	)
	verify := func(s *server) {
		t.Helper()
		qio(s,
			"read -P 0xab 0 1M",
			"read -P 0xcd 1M 64k",
			"read -P 0xab 1114112 983552",
			"read -P 0x11 2097664 3000",
			"read -P 0xab 2100664 2093640",
			"read -P 0x22 4M 1M",
			"read -P 0 5M 1M",
			"read -P 0 6M 256k",
			"read -P 0x22 6553600 786944",
			"read -P 0 7340544 1000",
			"read -P 0x22 7341544 1047064",
			"read -P 0x33 8M 512k",
			"read -P 0 8912896 512k",
			"read -P 0x44 9M 1M",
			"read -P 0x55 10M 1M",
			"read -P 0 11M 5M",
		)
	}
	verify(s)
	s.stop()
	os.RemoveAll(s.walDir)
	verify(h.serve("wal-b"))
}
