package backend

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/vfs"
)

func newFileT(t *testing.T, fsys vfs.FS, dir string) *File {
	t.Helper()
	f, err := NewFile(fsys, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func wantRange(t *testing.T, f *File, key string, off, n int64, want []byte) {
	t.Helper()
	got, err := f.GetRange(context.Background(), key, off, n)
	if err != nil {
		t.Fatalf("GetRange(%s, %d, %d): %v", key, off, n, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("GetRange(%s, %d, %d) = %q, want %q", key, off, n, got, want)
	}
}

// Ranged reads keep the file open; writes and deletes through the store
// are seen by the next read at once.
func TestFileRangeKeepsFileOpen(t *testing.T) {
	ctx := context.Background()
	for _, fsys := range []vfs.FS{vfs.Default, vfs.NewMem()} {
		f := newFileT(t, fsys, filepath.Join(t.TempDir(), "s"))
		if err := f.Put(ctx, "c/1", []byte("0123456789")); err != nil {
			t.Fatal(err)
		}
		wantRange(t, f, "c/1", 2, 3, []byte("234"))
		if len(f.fds.m) != 1 {
			t.Fatalf("%d files open after a ranged read, want 1", len(f.fds.m))
		}
		wantRange(t, f, "c/1", 0, 10, []byte("0123456789"))
		if err := f.Put(ctx, "c/1", []byte("abcdefghijklmnop")); err != nil {
			t.Fatal(err)
		}
		wantRange(t, f, "c/1", 10, 6, []byte("klmnop"))
		if _, err := f.PutIf(ctx, "c/1", []byte("XYZ"), version([]byte("abcdefghijklmnop"))); err != nil {
			t.Fatal(err)
		}
		wantRange(t, f, "c/1", 0, 3, []byte("XYZ"))
		if _, err := f.GetRange(ctx, "c/1", 0, 4); !errors.Is(err, ErrRange) {
			t.Fatalf("read past the new end: %v, want ErrRange", err)
		}
		if err := f.Delete(ctx, "c/1"); err != nil {
			t.Fatal(err)
		}
		if _, err := f.GetRange(ctx, "c/1", 0, 1); !errors.Is(err, ErrNotFound) {
			t.Fatalf("read after delete: %v, want ErrNotFound", err)
		}
		if len(f.fds.m) != 0 {
			t.Fatalf("%d files open after the delete, want 0", len(f.fds.m))
		}
	}
}

// A change made through another store on the same directory (another
// process) is seen once the cached descriptor is due for its check.
func TestFileRangeSeesOtherWriters(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "s")
	r := newFileT(t, nil, dir)
	w := newFileT(t, nil, dir)
	r.fds.recheck = 0
	if err := w.Put(ctx, "k", []byte("old-data")); err != nil {
		t.Fatal(err)
	}
	wantRange(t, r, "k", 0, 3, []byte("old"))
	if err := w.Put(ctx, "k", []byte("new-data")); err != nil {
		t.Fatal(err)
	}
	wantRange(t, r, "k", 0, 3, []byte("new"))
	if err := w.Delete(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.GetRange(ctx, "k", 0, 1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("read after another store's delete: %v, want ErrNotFound", err)
	}
	// A bit flipped in place is seen at once: the descriptor reads the file.
	if err := w.Put(ctx, "k", []byte("abc")); err != nil {
		t.Fatal(err)
	}
	r.fds.recheck = fdRecheck
	wantRange(t, r, "k", 0, 3, []byte("abc"))
	if err := os.WriteFile(filepath.Join(dir, "k"), []byte("abd"), 0o600); err != nil {
		t.Fatal(err)
	}
	wantRange(t, r, "k", 0, 3, []byte("abd"))
}

// The cache holds at most its limit of descriptors, and reads racing with
// writes, deletes and evictions all return whole, correct objects.
func TestFileRangeBoundedAndConcurrent(t *testing.T) {
	ctx := context.Background()
	f := newFileT(t, nil, filepath.Join(t.TempDir(), "s"))
	f.fds.limit = 4
	val := func(i, gen int) []byte { return bytes.Repeat([]byte(fmt.Sprintf("%02d%02d", i, gen)), 64) }
	for i := 0; i < 10; i++ {
		if err := f.Put(ctx, fmt.Sprintf("o%d", i), val(i, 0)); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < 300; n++ {
				i := (g*7 + n) % 10
				b, err := f.GetRange(ctx, fmt.Sprintf("o%d", i), 0, 256)
				if errors.Is(err, ErrNotFound) {
					continue // deleted by the writer below
				}
				if err != nil {
					t.Error(err)
					return
				}
				if !bytes.Equal(b[4:], b[:252]) || string(b[:2]) != fmt.Sprintf("%02d", i) {
					t.Errorf("o%d read %q", i, b[:8])
					return
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for n := 1; n < 50; n++ {
			k := fmt.Sprintf("o%d", n%10)
			if n%7 == 0 {
				_ = f.Delete(ctx, k)
			}
			if err := f.Put(ctx, k, val(n%10, n%100)); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	wg.Wait()
	if len(f.fds.m) > 4 {
		t.Fatalf("%d files open, limit 4", len(f.fds.m))
	}
	f.Close()
	if len(f.fds.m) != 0 {
		t.Fatalf("%d files open after Close", len(f.fds.m))
	}
}

// Keys are checked segment by segment: every segment a valid name.
func TestValidateKey(t *testing.T) {
	for _, k := range []string{"a", "vol/chunks/0000000000000001", "a.b/c_d/e-f"} {
		if err := ValidateKey(k); err != nil {
			t.Errorf("ValidateKey(%q) = %v, want nil", k, err)
		}
	}
	for _, k := range []string{"", "/", "a/", "/a", "a//b", "a/../b", "a/./b", "../a", "a/.hidden", "a b", "a/b\x00"} {
		if err := ValidateKey(k); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("ValidateKey(%q) = %v, want ErrInvalidKey", k, err)
		}
	}
}

// A ranged read of a file whose descriptor is cached allocates nothing:
// no path is built and the key is checked in place (random reads of a
// volume make one such read each).
func TestFileRangeCachedReadAllocatesNothing(t *testing.T) {
	ctx := context.Background()
	f := newFileT(t, vfs.Default, filepath.Join(t.TempDir(), "s"))
	if err := f.Put(ctx, "vol/chunks/0000000000000001", bytes.Repeat([]byte("x"), 8192)); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 4096)
	read := func() {
		if err := f.ReadRange(ctx, "vol/chunks/0000000000000001", 4096, p); err != nil {
			t.Fatal(err)
		}
	}
	read() // caches the descriptor
	if n := testing.AllocsPerRun(1000, read); n != 0 {
		t.Fatalf("a cached ranged read makes %v allocations, want 0", n)
	}
}
