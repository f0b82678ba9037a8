package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// vb runs vblock in-process against a file store and returns its exit
// status and output.
func vbRun(t *testing.T, store string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	getenv := func(k string) string {
		if k == envStore {
			return store
		}
		return ""
	}
	code := run(context.Background(), args, &out, &errb, getenv)
	return code, out.String(), errb.String()
}

func TestSnapshotCloneGC(t *testing.T) {
	dir := t.TempDir()
	store := "file://" + filepath.Join(dir, "store")
	img := filepath.Join(dir, "img")
	data := bytes.Repeat([]byte("viperblock"), 400000) // ~4 MB
	os.WriteFile(img, data, 0o600)
	mustRun := func(args ...string) string {
		t.Helper()
		code, out, errs := vbRun(t, store, args...)
		if code != 0 {
			t.Fatalf("vblock %s: exit %d: %s%s", strings.Join(args, " "), code, out, errs)
		}
		return out
	}
	mustRun("create", "a", "--size", "8MiB")
	mustRun("import", "a", img, "--wal-dir", filepath.Join(dir, "w"))
	mustRun("snapshot", "create", "a", "s1")
	if out := mustRun("snapshot", "list", "a"); !strings.Contains(out, "s1") {
		t.Fatalf("list: %s", out)
	}
	mustRun("clone", "a@s1", "b")
	mustRun("clone", "a", "c", "--size", "16MiB")
	if out := mustRun("snapshot", "delete", "a", "s1"); !strings.Contains(out, "clones use it: b") {
		t.Fatalf("delete with a dependant: %s", out)
	}
	if out := mustRun("inspect", "a"); !strings.Contains(out, "b") {
		t.Fatalf("inspect does not show the clone b: %s", out)
	}
	for _, v := range []string{"b", "c"} {
		out := filepath.Join(dir, v+".raw")
		mustRun("export", v, out)
		got, _ := os.ReadFile(out)
		if !bytes.Equal(got[:len(data)], data) {
			t.Fatalf("clone %s does not hold the source's data", v)
		}
	}
	mustRun("gc", "a")
	mustRun("gc", "b", "--wal-dir", filepath.Join(dir, "w"))
	// Bad input: exit 2 for usage, 1 for a missing snapshot.
	if code, _, _ := vbRun(t, store, "snapshot", "bogus", "a"); code != exitUsage {
		t.Fatalf("bad subcommand: exit %d", code)
	}
	if code, _, errs := vbRun(t, store, "clone", "a@nope", "d"); code != exitFail || !strings.Contains(errs, "not found") {
		t.Fatalf("clone of a missing snapshot: exit %d: %s", code, errs)
	}
	if code, _, _ := vbRun(t, store, "clone", "a@s1", "b"); code != exitFail {
		t.Fatalf("clone onto an existing name: exit %d", code)
	}
	// Deleting everything leaves an empty store.
	mustRun("delete", "c")
	mustRun("delete", "b")
	mustRun("delete", "a")
	var left []string
	filepath.Walk(filepath.Join(dir, "store"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() && !strings.HasPrefix(fi.Name(), ".") {
			left = append(left, p)
		}
		return nil
	})
	if len(left) > 0 {
		t.Fatalf("store not empty: %v", left)
	}
}
