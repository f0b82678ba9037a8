package backend

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/vfs"
)

// bigObject is an object large enough to be recycled, filled from seed.
func bigObject(seed int64, n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

func inode(t *testing.T, p string) uint64 {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.Sys().(*syscall.Stat_t).Ino
}

// poolFiles lists the pooled files (not the locks) under root's pools.
func poolFiles(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	filepath.Walk(filepath.Join(root, poolDirName), func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() && fi.Name() != "lock" {
			out = append(out, p)
		}
		return nil
	})
	return out
}

func wantGet(t *testing.T, s Store, key string, want []byte) {
	t.Helper()
	got, _, err := s.Get(context.Background(), key)
	if err != nil {
		t.Fatalf("Get(%s): %v", key, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("Get(%s): %d bytes, not the %d written", key, len(got), len(want))
	}
}

// A deleted chunk-sized object's file is reused by the next large Put,
// which leaves no trace of the old content; small objects are not pooled;
// the pool is invisible to List and removed by Close.
func TestFilePoolReusesDeletedFiles(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	f := newFileT(t, nil, dir)
	a := bigObject(1, 4<<20)
	if err := f.Put(ctx, "v/chunks/a", a); err != nil {
		t.Fatal(err)
	}
	ino := inode(t, filepath.Join(dir, "v/chunks/a"))
	if err := f.Put(ctx, "v/small", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := f.Delete(ctx, "v/chunks/a"); err != nil {
		t.Fatal(err)
	}
	if err := f.Delete(ctx, "v/small"); err != nil {
		t.Fatal(err)
	}
	if n := f.pool.size(); n != 1 {
		t.Fatalf("pool holds %d files after deleting one chunk and one small object, want 1", n)
	}
	if _, _, err := f.Get(ctx, "v/chunks/a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get of a deleted object: %v", err)
	}
	if keys, _ := f.List(ctx, ""); len(keys) != 0 {
		t.Fatalf("List shows %v", keys)
	}
	// A shorter object goes into the pooled file: same inode, exact content.
	b := bigObject(2, 3<<20+17)
	if err := f.PutUnsynced(ctx, "v/chunks/b", b); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(ctx, []string{"v/chunks/b"}); err != nil {
		t.Fatal(err)
	}
	if got := inode(t, filepath.Join(dir, "v/chunks/b")); got != ino {
		t.Fatalf("new object in inode %d, not the pooled %d", got, ino)
	}
	wantGet(t, f, "v/chunks/b", b)
	if n := f.pool.size(); n != 0 {
		t.Fatalf("pool holds %d files after reuse", n)
	}
	// Put (durable) reuses too.
	if err := f.Delete(ctx, "v/chunks/b"); err != nil {
		t.Fatal(err)
	}
	c := bigObject(3, 4<<20)
	if err := f.Put(ctx, "v/chunks/c", c); err != nil {
		t.Fatal(err)
	}
	if got := inode(t, filepath.Join(dir, "v/chunks/c")); got != ino {
		t.Fatalf("Put used inode %d, not the pooled %d", got, ino)
	}
	wantGet(t, f, "v/chunks/c", c)
	if err := f.Delete(ctx, "v/chunks/c"); err != nil {
		t.Fatal(err)
	}
	if len(poolFiles(t, dir)) != 1 {
		t.Fatalf("pool files: %v", poolFiles(t, dir))
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if left, _ := os.ReadDir(filepath.Join(dir, poolDirName)); len(left) != 0 {
		t.Fatalf("Close left pools: %v", left)
	}
}

// The pool never holds more than its bound; with recycling off nothing is
// pooled.
func TestFilePoolBound(t *testing.T) {
	ctx := context.Background()
	for _, limit := range []int{-1, 3} {
		dir := t.TempDir()
		f, err := NewFileOptions(nil, dir, FileOptions{PoolFiles: limit})
		if err != nil {
			t.Fatal(err)
		}
		for i := range 6 {
			if err := f.Put(ctx, fmt.Sprintf("c/%d", i), bigObject(int64(i), 1<<20)); err != nil {
				t.Fatal(err)
			}
		}
		for i := range 6 {
			if err := f.Delete(ctx, fmt.Sprintf("c/%d", i)); err != nil {
				t.Fatal(err)
			}
			if _, _, err := f.Get(ctx, fmt.Sprintf("c/%d", i)); !errors.Is(err, ErrNotFound) {
				t.Fatalf("deleted object still there: %v", err)
			}
		}
		want := max(limit, 0)
		if got := len(poolFiles(t, dir)); got != want {
			t.Fatalf("PoolFiles %d: %d files pooled, want %d", limit, got, want)
		}
		f.Close()
	}
	if DefaultPoolFiles != 64 {
		t.Fatalf("DefaultPoolFiles is %d; the package doc says 64", DefaultPoolFiles)
	}
}

// A file another store instance (with its own descriptors, as another
// process) is reading is not recycled: its reader keeps the old bytes.
func TestFilePoolSkipsFilesBeingRead(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	w := newFileT(t, nil, dir)
	r := newFileT(t, nil, dir)
	a := bigObject(1, 4<<20)
	if err := w.Put(ctx, "c/a", a); err != nil {
		t.Fatal(err)
	}
	wantRange(t, r, "c/a", 4096, 4096, a[4096:8192]) // r caches the open file
	if err := w.Delete(ctx, "c/a"); err != nil {
		t.Fatal(err)
	}
	if n := w.pool.size(); n != 0 {
		t.Fatalf("a file being read was pooled (%d)", n)
	}
	// Fill the pool from another object and write new objects: none may
	// land in r's open file.
	if err := w.Put(ctx, "c/x", bigObject(9, 4<<20)); err != nil {
		t.Fatal(err)
	}
	if err := w.Delete(ctx, "c/x"); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := w.Put(ctx, fmt.Sprintf("c/n%d", i), bigObject(int64(10+i), 4<<20)); err != nil {
			t.Fatal(err)
		}
	}
	// r's cached descriptor (within its recheck time) still reads a's bytes.
	wantRange(t, r, "c/a", 8192, 4096, a[8192:12288])

	// A reader that locked the file after it was moved into the pool sees
	// that the key no longer names it.
	if err := w.Put(ctx, "c/b", bigObject(20, 4<<20)); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "c/b")
	fh, err := vfs.Default.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	if err := w.Delete(ctx, "c/b"); err != nil {
		t.Fatal(err)
	}
	if w.pool.size() != 1 {
		t.Fatalf("unlocked file not pooled: pool %d", w.pool.size())
	}
	if err := vfs.TryLockFile(fh, vfs.LockShared); err != nil {
		t.Fatal(err)
	}
	if same, err := vfs.IsFile(fh, p); err != nil || same {
		t.Fatalf("IsFile after the move: %v %v", same, err)
	}
	// And the next Put may not take a pooled file a reader holds.
	if err := w.Put(ctx, "c/d", bigObject(21, 4<<20)); err != nil {
		t.Fatal(err)
	}
	if same, _ := vfs.IsFile(fh, filepath.Join(dir, "c/d")); same {
		t.Fatal("Put reused a pooled file that a reader holds")
	}
}

// Many goroutines putting, reading and deleting large objects never read
// one key's bytes under another.
func TestFilePoolConcurrent(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	f, err := NewFileOptions(nil, dir, FileOptions{PoolFiles: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	other := newFileT(t, nil, dir) // a second instance reads too
	// Each object's first 8 bytes name its key and generation; the rest
	// is derived from them.
	obj := func(key string, gen int) []byte {
		b := bigObject(int64(len(key)*1000+gen), 1<<20+gen*4096)
		copy(b, fmt.Sprintf("%-6s%02d", key, gen%100))
		return b
	}
	check := func(s Store, key string) error {
		got, _, err := s.Get(ctx, key)
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		var gen int
		if _, err := fmt.Sscanf(string(got[6:8]), "%02d", &gen); err != nil || strings.TrimSpace(string(got[:6])) != key {
			return fmt.Errorf("%s holds another object's bytes: %q", key, got[:8])
		}
		if !bytes.Equal(got, obj(key, gen)) {
			return fmt.Errorf("%s gen %d: content differs", key, gen)
		}
		return nil
	}
	var wg sync.WaitGroup
	errc := make(chan error, 16)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for gen := range 12 {
				for k := range 3 {
					key := fmt.Sprintf("k%d-%d", w, k)
					if err := f.Put(ctx, key, obj(key, gen)); err != nil {
						errc <- err
						return
					}
					for _, s := range []Store{f, other} {
						if err := check(s, key); err != nil {
							errc <- err
							return
						}
					}
					if _, err := other.GetRange(ctx, fmt.Sprintf("k%d-%d", (w+1)%4, k), 0, 8); err != nil && !errors.Is(err, ErrNotFound) {
						errc <- err
						return
					}
					if gen%2 == 1 {
						if err := f.Delete(ctx, key); err != nil {
							errc <- err
							return
						}
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	if n := len(poolFiles(t, dir)); n > 4 {
		t.Fatalf("pool holds %d files, bound 4", n)
	}
}

// A crash at any step of a Put that reuses a pooled file, or of a Delete
// that pools one, leaves the key's old object or the new one (and for a
// Delete, the object or nothing), never a part; the next open removes
// the crashed store's pool.
func TestFilePoolCrash(t *testing.T) {
	ctx := context.Background()
	rng := rand.New(rand.NewSource(1))
	old := bigObject(1, 2<<20)
	gone := bigObject(2, 3<<20)
	neu := bigObject(3, 1<<20+5)
	for _, op := range []string{"put", "putunsynced", "delete"} {
		for at := 0; ; at++ {
			mem := vfs.NewMem()
			s, err := NewFile(mem, "/store")
			if err != nil {
				t.Fatal(err)
			}
			for k, d := range map[string][]byte{"c/key": old, "c/gone": gone} {
				if err := s.Put(ctx, k, d); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.Delete(ctx, "c/gone"); err != nil { // pools gone's file
				t.Fatal(err)
			}
			if s.pool.size() != 1 {
				t.Fatal("setup: nothing pooled")
			}
			c := vfs.NewCrasher(mem, at, rng)
			s.fs = c.FS()
			s.pool.fs = c.FS()
			switch op {
			case "put":
				err = s.Put(ctx, "c/key", neu)
			case "putunsynced":
				if err = s.PutUnsynced(ctx, "c/key", neu); err == nil {
					err = s.Sync(ctx, []string{"c/key"})
				}
			case "delete":
				err = s.Delete(ctx, "c/key")
			}
			// Crash points after the operation returned: it must then be
			// durable.
			done := err == nil
			if done {
				_ = s.Put(ctx, "c/later", []byte("x"))
			}
			after := c.Crashed()
			if after == nil {
				if err != nil {
					t.Fatalf("%s without a crash: %v", op, err)
				}
				break
			}
			r, err2 := NewFile(after, "/store")
			if err2 != nil {
				t.Fatalf("%s crash at %d: reopen: %v", op, at, err2)
			}
			got, _, gerr := r.Get(ctx, "c/key")
			switch {
			case done && op == "delete":
				if !errors.Is(gerr, ErrNotFound) {
					t.Fatalf("crash after a Delete returned: %v", gerr)
				}
			case done:
				if gerr != nil || !bytes.Equal(got, neu) {
					t.Fatalf("%s: crash after it returned: key holds %d bytes (err %v), not the new object", op, len(got), gerr)
				}
			case gerr == nil && bytes.Equal(got, old):
			case gerr == nil && bytes.Equal(got, neu) && op == "put":
			case gerr == nil && bytes.Equal(got, neu) && op == "putunsynced":
			case errors.Is(gerr, ErrNotFound) && op == "delete":
			case op == "putunsynced" && gerr == nil && !synced(c.Ops(), "/store/c/key"):
				// Before the Sync's fsync of the object, a crash may leave
				// it torn (the engine never commits an unsynced object).
			default:
				t.Fatalf("%s crash before op %d (%v): key holds %d bytes (err %v), neither old nor new",
					op, at, c.Ops(), len(got), gerr)
			}
			if _, _, err := r.Get(ctx, "c/gone"); !errors.Is(err, ErrNotFound) {
				t.Fatalf("%s crash at %d: the pooled object reappeared: %v", op, at, err)
			}
			if names, _ := after.ReadDir("/store/" + poolDirName); len(names) != 0 {
				t.Fatalf("%s crash at %d: reopen left pools %v", op, at, names)
			}
		}
	}
}

// synced reports whether ops include an fsync of name.
func synced(ops []string, name string) bool {
	for _, o := range ops {
		if o == "sync "+name {
			return true
		}
	}
	return false
}

// Two processes on one directory: each has its own pool; a live pool is
// left alone by the other's open, and an abandoned one (its process
// killed) is removed by the next open.
func TestFilePoolTwoProcesses(t *testing.T) {
	if os.Getenv("VB_POOL_CHILD") != "" {
		poolChild()
		return
	}
	ctx := context.Background()
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestFilePoolTwoProcesses$", "-test.count=1")
	cmd.Env = append(os.Environ(), "VB_POOL_CHILD="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	buf := make([]byte, 5)
	if _, err := out.Read(buf); err != nil || string(buf) != "ready" {
		t.Fatalf("child: %q %v", buf, err)
	}
	if n := len(poolFiles(t, dir)); n != 2 {
		out, _ := exec.Command("find", dir).CombinedOutput()
		t.Fatalf("child pooled %d files, want 2: %s", n, out)
	}
	// Our open sweeps: the child's pool is locked, so it stays.
	f := newFileT(t, nil, dir)
	if n := len(poolFiles(t, dir)); n != 2 {
		t.Fatalf("open removed a live pool: %d files left", n)
	}
	// Our own deletes and puts use our own pool; the child's object reads
	// back whole.
	if err := f.Put(ctx, "p/mine", bigObject(7, 2<<20)); err != nil {
		t.Fatal(err)
	}
	if err := f.Delete(ctx, "p/mine"); err != nil {
		t.Fatal(err)
	}
	if n := len(poolFiles(t, dir)); n != 3 {
		t.Fatalf("%d pooled files, want 3", n)
	}
	wantGet(t, f, "p/kept", bigObject(100, 2<<20))
	// Kill the child: its pool is abandoned and the next open removes it.
	cmd.Process.Kill()
	cmd.Wait()
	g := newFileT(t, nil, dir)
	_ = g
	if n := len(poolFiles(t, dir)); n != 1 {
		t.Fatalf("after the child died and a new open: %d pooled files, want our 1", n)
	}
	wantGet(t, f, "p/kept", bigObject(100, 2<<20))
}

// poolChild writes and deletes objects in the shared store, says ready,
// and waits to be killed.
func poolChild() {
	ctx := context.Background()
	dir := os.Getenv("VB_POOL_CHILD")
	f, err := NewFile(nil, dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	for i := range 3 {
		if f.Put(ctx, fmt.Sprintf("p/c%d", i), bigObject(int64(50+i), 2<<20)) != nil {
			os.Exit(2)
		}
	}
	for i := range 3 { // three pooled files; the next Put takes one
		if f.Delete(ctx, fmt.Sprintf("p/c%d", i)) != nil {
			os.Exit(2)
		}
	}
	if err := f.Put(ctx, "p/kept", bigObject(100, 2<<20)); err != nil {
		os.Exit(2)
	}
	os.Stdout.WriteString("ready")
	time.Sleep(time.Minute)
	os.Exit(0)
}

// A pool directory whose lock is free (its creator crashed between
// creating it and locking it, or exited) is removed by an open; a pool
// being created concurrently with such a sweep either survives locked or
// is created afresh.
func TestFilePoolSweepRace(t *testing.T) {
	dir := t.TempDir()
	stale := filepath.Join(dir, poolDirName, "00000000deadbeef")
	if err := os.MkdirAll(stale, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(stale, "1"), make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	newFileT(t, nil, dir)
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Fatalf("stale pool not removed: %v", err)
	}
	ctx := context.Background()
	for i := range 20 {
		f := newFileT(t, nil, dir)
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			k := fmt.Sprintf("r/%d", i)
			if err := f.Put(ctx, k, bigObject(int64(i), 1<<20)); err != nil {
				t.Error(err)
			}
			if err := f.Delete(ctx, k); err != nil {
				t.Error(err)
			}
		}()
		go func() {
			defer wg.Done()
			g, err := NewFile(nil, dir)
			if err != nil {
				t.Error(err)
				return
			}
			g.Close()
		}()
		wg.Wait()
		if f.pool.size() == 1 {
			if _, err := os.Stat(filepath.Join(f.pool.dir, "lock")); err != nil {
				t.Fatalf("round %d: pooled file in a swept pool: %v", i, err)
			}
			if len(poolFiles(t, dir)) != 1 {
				t.Fatalf("round %d: pool files %v", i, poolFiles(t, dir))
			}
		}
		f.Close()
	}
}
