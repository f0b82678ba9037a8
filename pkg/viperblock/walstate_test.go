package viperblock

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// InspectWAL counts the shards' segments only: not the OWNER file, not a
// stale WAL set aside, not stray files.
func TestInspectWAL(t *testing.T) {
	dir := t.TempDir()
	if ws, err := InspectWAL(dir, "v"); err != nil || ws != (WALState{}) {
		t.Fatalf("no WAL: %+v, %v", ws, err)
	}
	write := func(p string, n int) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, make([]byte, n), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(dir, "v", "03", "0000000000000001.wal"), 5000)
	write(filepath.Join(dir, "v", "15", "0000000000000002.wal"), 3000)
	write(filepath.Join(dir, "v", "15", "notes.txt"), 100)
	write(filepath.Join(dir, "v", "OWNER"), 100)
	write(filepath.Join(dir, "v", "stale-1", "03-0000000000000001.wal"), 7000)
	ws, err := InspectWAL(dir, "v")
	if err != nil || ws.Segments != 2 || ws.PendingBytes != 8000 || ws.Oldest.IsZero() || time.Since(ws.Oldest) > time.Minute {
		t.Fatalf("InspectWAL = %+v, %v", ws, err)
	}
	if _, err := InspectWAL(dir, "../x"); err == nil {
		t.Fatal("a name with a path accepted")
	}
}
