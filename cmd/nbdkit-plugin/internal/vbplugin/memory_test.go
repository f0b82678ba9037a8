package vbplugin

import (
	"runtime/debug"
	"strings"
	"testing"

	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
)

// memoryConfig completes a configuration with the given parameters and
// nbdkit threads.
func memoryConfig(t *testing.T, threads int, params map[string]string) (Config, error) {
	t.Helper()
	c := Config{Threads: threads}
	for k, v := range map[string]string{"volume": "v", "store": "mem://", "wal_dir": "/tmp/w"} {
		params[k] = v
	}
	for k, v := range params {
		if err := c.Set(k, v); err != nil {
			return c, err
		}
	}
	return c, c.Complete(func(string) string { return "" })
}

// memory= divides into the fixed part, the request buffers of every
// thread of every budgeted connection, and the engine's share; the Go
// memory limit leaves out the C parts.
func TestMemoryShare(t *testing.T) {
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	for _, c := range []struct {
		threads int
		params  map[string]string
		request int64
		buffers int64
	}{
		{8, map[string]string{"memory": "96MiB"}, 1 << 20, 8 * (1<<20 + threadBytes)},
		{0, map[string]string{"memory": "128MiB"}, 1 << 20, DefaultThreads * (1<<20 + threadBytes)},
		{2, map[string]string{"memory": "96MiB", "connections": "4"}, 1 << 20, 8 * (1<<20 + threadBytes)},
		{4, map[string]string{"memory": "96MiB", "max_request": "256KiB"}, 256 << 10, 4 * (256<<10 + threadBytes)},
		{16, map[string]string{}, DefaultMaxRequest, 0}, // no memory=: no budget
	} {
		cfg, err := memoryConfig(t, c.threads, c.params)
		if err != nil {
			t.Fatalf("%v, %d threads: %v", c.params, c.threads, err)
		}
		if cfg.MaxRequest != c.request {
			t.Errorf("%v: max request %d, want %d", c.params, cfg.MaxRequest, c.request)
		}
		var o vb.Options
		cfg.memoryOptions(&o)
		if cfg.Memory == 0 {
			if o.MemoryBytes != 0 {
				t.Errorf("no memory=: engine share %d", o.MemoryBytes)
			}
			continue
		}
		if want := cfg.Memory - ProcessOverhead - c.buffers; o.MemoryBytes != want {
			t.Errorf("%v, %d threads: engine share %d, want %d", c.params, c.threads, o.MemoryBytes, want)
		}
		if got, want := debug.SetMemoryLimit(-1), cfg.Memory-cOverhead-c.buffers; got != want {
			t.Errorf("%v, %d threads: Go memory limit %d, want %d", c.params, c.threads, got, want)
		}
	}
	// A share that leaves the engine less than its minimum is refused,
	// naming the threads.
	if _, err := memoryConfig(t, 64, map[string]string{"memory": "96MiB"}); err == nil || !strings.Contains(err.Error(), "64 nbdkit threads") {
		t.Errorf("memory=96MiB with 64 threads: %v", err)
	}
	if _, err := memoryConfig(t, 8, map[string]string{"memory": "96MiB", "connections": "4"}); err == nil {
		t.Error("memory=96MiB for 4 connections of 8 threads accepted")
	}
	for k, v := range map[string]string{"max_request": "100KiB", "connections": "0", "memory": "0"} {
		if _, err := memoryConfig(t, 8, map[string]string{k: v}); err == nil {
			t.Errorf("%s=%s accepted", k, v)
		}
	}
	if _, err := memoryConfig(t, 8, map[string]string{"max_request": "64MiB"}); err == nil {
		t.Error("max_request=64MiB accepted")
	}
}
