package vbplugin

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/volmetrics"
)

// TestMetricsSocket: with metrics=, the plugin serves its NBD request
// counts, the engine's counters and its store's requests on the socket
// from AfterFork until Cleanup.
func TestMetricsSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "m.sock")
	p := New(nil)
	for k, v := range map[string]string{"volume": "vol", "store": memStore(t), "wal_dir": t.TempDir(), "size": "1MiB", "metrics": sock} {
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
	p.AfterFork()
	c, _ := p.Open(false)
	buf := make([]byte, 8192)
	for range 3 {
		if err := c.Pwrite(buf, 4096, false); err != nil {
			t.Fatal(err)
		}
	}
	c.Pread(buf[:4096], 0)
	c.Trim(8192, 0, false)
	c.Zero(4096, 0, false)
	c.Flush()
	c.Pwrite(buf, 1<<20, false) // past the end: an error
	c.Close()                   // the last connection: a drain
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := volmetrics.Fetch(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]volmetrics.IO{
		"write": {Ops: 3, Bytes: 3 * 8192, Errors: 1}, "read": {Ops: 1, Bytes: 4096},
		"trim": {Ops: 1, Bytes: 8192}, "zero": {Ops: 1, Bytes: 4096}, "flush": {Ops: 1},
	}
	for op, w := range want {
		if s.IO[op] != w {
			t.Errorf("io %s: %+v, want %+v", op, s.IO[op], w)
		}
	}
	if s.Engine.Drains == 0 || s.Engine.DrainBytes == 0 || s.Engine.FlushSeconds.Count == 0 || s.Engine.DrainSeconds.Count == 0 {
		t.Errorf("engine %+v: want drains and a flush", s.Engine)
	}
	if put := s.Store[backend.OpPutIfMatch]; put.OK == 0 || put.Seconds.Count != put.OK+put.Errors {
		t.Errorf("store put_if_match %+v: want the manifest commits", put)
	}
	if err := p.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left after Cleanup: %v", err)
	}
}
