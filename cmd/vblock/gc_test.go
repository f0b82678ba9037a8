package main

import (
	"context"
	"math/rand"
	"path/filepath"
	"strings"
	"testing"
	"time"

	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

// TestGCAsksServingOwner: gc of a volume a server has open asks that
// server to compact instead of taking the volume over: the server keeps
// serving (not fenced) and the store shrinks. inspect shows the ratio.
func TestGCAsksServingOwner(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	url := "file://" + filepath.Join(dir, "store")
	store, err := backend.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	o := vb.Options{WALDir: filepath.Join(dir, "w"), DrainInterval: 100 * time.Millisecond,
		Compaction: vb.CompactionOptions{Disabled: true}}
	v, err := vb.Create(ctx, store, "a", 4<<20, o)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	rng := rand.New(rand.NewSource(1))
	buf := make([]byte, vb.BlockSize)
	for i := 0; i < 4096; i++ {
		rng.Read(buf)
		if _, err := v.WriteAt(buf, int64(rng.Intn(1024))*vb.BlockSize); err != nil {
			t.Fatal(err)
		}
		if i%200 == 199 {
			if err := v.Drain(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := v.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	code, out, errs := vbRun(t, url, "inspect", "a")
	if code != 0 || !strings.Contains(out, "stored:") {
		t.Fatalf("inspect: exit %d: %s%s", code, out, errs)
	}
	// With --wal-dir too: a live owner is asked, never fenced.
	code, out, errs = vbRun(t, url, "gc", "a", "--wal-dir", filepath.Join(dir, "other"), "--wait", "30s")
	if code != 0 || !strings.Contains(out, "compacted by its owner") {
		t.Fatalf("gc: exit %d: %s%s", code, out, errs)
	}
	t.Logf("%s", out)
	if v.Stats().GCRuns == 0 {
		t.Fatalf("the owner did not compact")
	}
	if _, err := v.WriteAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(); err != nil {
		t.Fatalf("the owner was fenced: %v", err)
	}
}
