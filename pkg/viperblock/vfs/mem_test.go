package vfs

import (
	"math/rand"
	"testing"
)

func write(t *testing.T, fs FS, name, data string, sync bool) {
	t.Helper()
	f, err := fs.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte(data)); err != nil {
		t.Fatal(err)
	}
	if sync {
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
}

func TestCrashKeepsOnlyDurable(t *testing.T) {
	fs := NewMem()
	if err := fs.MkdirAll("/d", 0o700); err != nil {
		t.Fatal(err)
	}
	if err := SyncDir(fs, "/"); err != nil {
		t.Fatal(err)
	}
	write(t, fs, "/d/synced", "abc", true)
	write(t, fs, "/d/unsynced", "xyz", false)
	if err := SyncDir(fs, "/d"); err != nil {
		t.Fatal(err)
	}
	write(t, fs, "/d/nodirsync", "q", true) // data synced, entry not
	c := fs.CrashClone(nil)
	if b, err := ReadFile(c, "/d/synced"); err != nil || string(b) != "abc" {
		t.Fatalf("synced file: %q %v", b, err)
	}
	if b, err := ReadFile(c, "/d/unsynced"); err != nil || len(b) != 0 {
		t.Fatalf("unsynced data survived: %q %v", b, err)
	}
	if _, err := c.Stat("/d/nodirsync"); err == nil {
		t.Fatal("entry survived without a directory sync")
	}
	// Atomic replace: the old or the new content, never a mix.
	if err := WriteFileAtomic(fs, "/d/synced", []byte("new")); err != nil {
		t.Fatal(err)
	}
	if b, _ := ReadFile(fs.CrashClone(nil), "/d/synced"); string(b) != "new" {
		t.Fatalf("after atomic write: %q", b)
	}
}

func TestCrashTearsAppends(t *testing.T) {
	fs := NewMem()
	write(t, fs, "/f", "0123", true)
	f, _ := fs.OpenReadWrite("/f")
	f.Write([]byte("0123"))
	f.Write([]byte("456789"))
	SyncDir(fs, "/")
	seen := map[string]bool{}
	rng := rand.New(rand.NewSource(1))
	for i := 0; i < 200; i++ {
		b, _ := ReadFile(fs.CrashClone(rng), "/f")
		if len(b) < 4 || string(b) != "0123456789"[:len(b)] {
			t.Fatalf("crash left %q: not synced data plus a prefix of the tail", b)
		}
		seen[string(b)] = true
	}
	if len(seen) < 3 {
		t.Fatalf("only %d distinct outcomes", len(seen))
	}
}

func TestLocks(t *testing.T) {
	fs := NewMem()
	l, err := fs.TryLock("/lock")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fs.TryLock("/lock"); err == nil {
		t.Fatal("second TryLock succeeded")
	}
	l.Close()
	if l2, err := fs.TryLock("/lock"); err != nil {
		t.Fatal(err)
	} else {
		l2.Close()
	}
	dir := t.TempDir()
	ol, err := Default.TryLock(dir + "/lock")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Default.TryLock(dir + "/lock"); err == nil {
		t.Fatal("second flock succeeded")
	}
	ol.Close()
}
