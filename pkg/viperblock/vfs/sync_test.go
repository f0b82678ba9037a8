package vfs

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// DataSync and StartWriteback work on real files (fdatasync,
// sync_file_range) and fall back to Sync on the in-memory filesystem, where
// DataSync makes data durable across CrashClone like Sync.
func TestDataSyncAndWriteback(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	f, err := Default.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("x"), 1<<20)
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	StartWriteback(f)
	if err := DataSync(f); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back: %v", err)
	}
	if err := DataSync(f); err == nil {
		t.Fatal("DataSync of a closed file succeeded")
	}

	m := NewMem()
	if err := MkdirAllDurable(m, "/d"); err != nil {
		t.Fatal(err)
	}
	mf, err := m.Create("/d/f")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mf.Write(data); err != nil {
		t.Fatal(err)
	}
	StartWriteback(mf) // a no-op here
	if err := DataSync(mf); err != nil {
		t.Fatal(err)
	}
	if err := SyncDir(m, "/d"); err != nil {
		t.Fatal(err)
	}
	c := m.CrashClone(nil)
	cf, err := c.Open("/d/f")
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := cf.Size(); n != int64(len(data)) {
		t.Fatalf("after DataSync and a crash the file has %d bytes, want %d", n, len(data))
	}
}
