package vbplugin

import (
	"bytes"
	"context"
	"fmt"
	"syscall"
	"testing"
)

// virtual_size=: the export advertises more than the volume; past the
// volume's end reads are zeros, zero/trim do nothing, writes are ENOSPC;
// when the volume grows, the new range reads and writes as usual.
func TestVirtualSize(t *testing.T) {
	p := New(nil)
	for _, kv := range [][2]string{{"volume", "vol"}, {"store", memStore(t)}, {"wal_dir", t.TempDir()},
		{"size", "1MiB"}, {"virtual_size", "4MiB"}} {
		if err := p.Cfg.Set(kv[0], kv[1]); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Cfg.Complete(nil); err != nil {
		t.Fatal(err)
	}
	if err := p.GetReady(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer p.Cleanup()
	c, _ := p.Open(false)
	defer c.Close()
	if c.Size() != 4<<20 {
		t.Fatalf("size %d, want the virtual 4 MiB", c.Size())
	}
	data := bytes.Repeat([]byte{0xab}, 8192)
	if err := c.Pwrite(data, 1<<20-8192, false); err != nil {
		t.Fatal(err)
	}
	// A read across the volume's end: data, then zeros.
	got := bytes.Repeat([]byte{1}, 16384)
	if err := c.Pread(got, 1<<20-8192); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:8192], data) || !bytes.Equal(got[8192:], make([]byte, 8192)) {
		t.Fatal("read across the volume's end")
	}
	// Wholly past the end: zeros.
	got = bytes.Repeat([]byte{1}, 4096)
	if err := c.Pread(got, 3<<20); err != nil || !bytes.Equal(got, make([]byte, 4096)) {
		t.Fatalf("read past the end: %v", err)
	}
	// Writes past the end fail with ENOSPC; zero and trim are no-ops there
	// and clipped across the end.
	if err := c.Pwrite(data, 1<<20-4096, false); Errno(err, true) != syscall.ENOSPC {
		t.Errorf("write across the end: %v", err)
	}
	if err := c.Pwrite(data, 2<<20, false); Errno(err, true) != syscall.ENOSPC {
		t.Errorf("write past the end: %v", err)
	}
	if err := c.Zero(8192, 2<<20, false); err != nil {
		t.Errorf("zero past the end: %v", err)
	}
	if err := c.Trim(16384, 1<<20-8192, false); err != nil {
		t.Errorf("trim across the end: %v", err)
	}
	got = make([]byte, 8192)
	c.Pread(got, 1<<20-8192)
	if !bytes.Equal(got, make([]byte, 8192)) {
		t.Error("trim across the end did not zero the volume's part")
	}
	var ext []string
	if err := c.Extents(1<<20, 3<<20, false, func(off, n uint64, hole bool) error {
		ext = append(ext, fmt.Sprintf("%d+%d:%v", off, n, hole))
		return nil
	}); err != nil || fmt.Sprint(ext) != fmt.Sprintf("[%d+%d:true]", 3<<20, 1<<20) {
		t.Errorf("extents past the end: %v %v", ext, err)
	}
	// The volume grows: the new range is ordinary.
	if err := p.Volume().Resize(context.Background(), 2<<20); err != nil {
		t.Fatal(err)
	}
	if err := c.Pwrite(data, 1<<20, true); err != nil {
		t.Fatalf("write into the grown range: %v", err)
	}
	got = make([]byte, 8192)
	if err := c.Pread(got, 1<<20); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read the grown range: %v", err)
	}
	if c.Size() != 4<<20 {
		t.Errorf("size %d after growing", c.Size())
	}
	// Past the virtual size, requests fail as they would without it.
	if err := c.Pread(got, 4<<20); Errno(err, false) != syscall.EINVAL {
		t.Errorf("read past the virtual size: %v", err)
	}
}

func TestVirtualSizeConfig(t *testing.T) {
	for v, ok := range map[string]bool{"1GiB": true, "1048576": true, "1000": false, "x": false, "0": false, "2PiB": false} {
		var c Config
		if err := c.Set("virtual_size", v); (err == nil) != ok {
			t.Errorf("virtual_size=%s: %v", v, err)
		}
	}
}
