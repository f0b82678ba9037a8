package viperblock_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

// After drains and a clean close, no WAL segment is left behind, nor any
// free file kept for reuse; the drains in between did reuse files.
func TestCleanCloseLeavesNoSegments(t *testing.T) {
	dir := t.TempDir()
	o := vb.Options{WALDir: dir, DrainBytes: 256 << 10}
	v := mustCreate(t, backend.NewMem(), "v", 8<<20, o)
	for i := 0; i < 64; i++ {
		if _, err := v.WriteAt(fill(byte(i), 64<<10), int64(i)*(64<<10)%(8<<20)); err != nil {
			t.Fatal(err)
		}
		if i%8 == 0 {
			v.Flush()
			v.Drain(context.Background())
		}
	}
	if v.Stats().WALRecycled == 0 {
		t.Error("no WAL segment was written into a recycled file")
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	var left []string
	filepath.Walk(filepath.Join(dir, "v"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && (strings.HasSuffix(p, ".wal") || strings.HasSuffix(p, ".free")) {
			left = append(left, p)
		}
		return nil
	})
	if len(left) > 0 {
		t.Fatalf("segments left after a clean close: %v", left)
	}
}
