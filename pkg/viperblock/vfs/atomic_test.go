package vfs

import (
	"errors"
	"math/rand"
	"os"
	"path/filepath"
	"testing"
)

func TestWriteFileAtomicMode(t *testing.T) {
	dir := t.TempDir()
	for _, perm := range []os.FileMode{0o600, 0o644} {
		p := filepath.Join(dir, "f"+perm.String())
		if err := WriteFileAtomicMode(Default, p, []byte("x"), perm); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm() != perm {
			t.Fatalf("mode %v, %v; want %v", fi.Mode().Perm(), err, perm)
		}
		if _, err := os.Stat(p + ".tmp"); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("temporary file left: %v", err)
		}
	}
	// An FS that cannot set modes refuses a mode other than Create's.
	if err := WriteFileAtomicMode(Error(NewMem(), func(Op, string) error { return nil }), "/f", []byte("x"), 0o644); err == nil {
		t.Fatal("mode 0644 accepted by an FS without Chmod")
	}
}

// The Crasher strikes before the chosen operation: every point of an
// atomic write leaves the old or the new content.
func TestCrasherAtomicWrite(t *testing.T) {
	for at := 0; ; at++ {
		mem := NewMem()
		if err := WriteFileAtomic(mem, "/f", []byte("old")); err != nil {
			t.Fatal(err)
		}
		c := NewCrasher(mem, at, rand.New(rand.NewSource(int64(at))))
		err := WriteFileAtomicMode(c.FS(), "/f", []byte("new"), 0o640)
		after := c.Crashed()
		if after == nil {
			if err != nil {
				t.Fatal(err)
			}
			if at < 6 {
				t.Fatalf("the write finished after %d operations: %v", at, c.Ops())
			}
			return
		}
		if !errors.Is(err, ErrCrashed) {
			t.Fatalf("crash before op %d: %v", at, err)
		}
		b, err := ReadFile(after, "/f")
		if err != nil || (string(b) != "old" && string(b) != "new") {
			t.Fatalf("crash before op %d (after %v): %q, %v", at, c.Ops(), b, err)
		}
	}
}
