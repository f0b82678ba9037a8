package main

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/viperblock/viperblock-csi/internal/testutil"
	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

type result struct {
	code           int
	stdout, stderr string
}

// vblock runs the CLI in-process against a file store in dir.
func vblock(t *testing.T, dir string, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	env := map[string]string{envStore: "file://" + filepath.Join(dir, "store")}
	code := run(context.Background(), args, &out, &errb, func(k string) string { return env[k] })
	return result{code, out.String(), errb.String()}
}

func TestCreateListInspectDelete(t *testing.T) {
	dir := t.TempDir()
	if r := vblock(t, dir, "create", "v1", "--size", "10MiB"); r.code != 0 || !strings.Contains(r.stdout, "10 MiB") {
		t.Fatalf("create: %+v", r)
	}
	if r := vblock(t, dir, "create", "--size=1GiB", "v2"); r.code != 0 {
		t.Fatalf("create with the flag first: %+v", r)
	}
	if r := vblock(t, dir, "create", "v1", "--size", "1MiB"); r.code != 1 || !strings.Contains(r.stderr, "already exists") {
		t.Fatalf("create twice: %+v", r)
	}
	if r := vblock(t, dir, "list"); r.stdout != "v1\nv2\n" {
		t.Fatalf("list: %+v", r)
	}
	if r := vblock(t, dir, "list", "-l"); !strings.Contains(r.stdout, "v2    1 GiB") {
		t.Fatalf("list -l: %q", r.stdout)
	}
	r := vblock(t, dir, "inspect", "v1")
	for _, want := range []string{"name:          v1", "size:          10 MiB (10485760 bytes)", "written:       0 B", "snapshots:     none", "parent:        none", "epoch:         0"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("inspect lacks %q:\n%s", want, r.stdout)
		}
	}
	if r := vblock(t, dir, "inspect", "--json", "v1"); !strings.Contains(r.stdout, `"Size": 10485760`) {
		t.Errorf("inspect --json: %s", r.stdout)
	}
	if r := vblock(t, dir, "delete", "v1"); r.code != 0 {
		t.Fatalf("delete: %+v", r)
	}
	if r := vblock(t, dir, "inspect", "v1"); r.code != 1 || !strings.Contains(r.stderr, "volume v1 not found") {
		t.Fatalf("inspect deleted: %+v", r)
	}
	if r := vblock(t, dir, "delete", "v1"); r.code != 1 || !strings.Contains(r.stderr, "not found") {
		t.Fatalf("delete twice: %+v", r)
	}
}

func TestUsageErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{nil, 2, "usage: vblock"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"create", "v"}, 2, "--size is required"},
		{[]string{"create", "v", "--size", "ten"}, 2, `invalid size: "ten"`},
		{[]string{"create", "v", "--size", "0"}, 2, "must be positive"},
		{[]string{"create", "bad/name", "--size", "1M"}, 1, "invalid volume name"},
		{[]string{"create"}, 2, "expected 1 argument"},
		{[]string{"inspect", "a", "b"}, 2, "expected 1 argument"},
		{[]string{"create", "v", "--bogus"}, 2, "flag provided but not defined: -bogus"},
		{[]string{"serve", "v"}, 2, "--socket PATH is required"},
		{[]string{"import", "v", "/nonexistent/file"}, 1, "no such file"},
	} {
		r := vblock(t, dir, tc.args...)
		if r.code != tc.code || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("vblock %v: exit %d, stderr %q; want exit %d mentioning %q", tc.args, r.code, r.stderr, tc.code, tc.want)
		}
		if n := strings.Count(strings.TrimSpace(r.stderr), "\n"); tc.code == 1 && n != 0 {
			t.Errorf("vblock %v: error is not one line: %q", tc.args, r.stderr)
		}
	}
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"create"}, &out, &errb, func(string) string { return "" }); code != 2 {
		t.Errorf("no store: exit %d", code)
	}
	for _, c := range commands {
		r := vblock(t, dir, c.name, "--help")
		if r.code != 0 || !strings.Contains(r.stdout, "usage: vblock "+c.name) || !strings.Contains(r.stdout, "--store") {
			t.Errorf("%s --help: %+v", c.name, r)
		}
	}
	if r := vblock(t, dir, "--help"); r.code != 0 || !strings.Contains(r.stdout, "load-dir") {
		t.Errorf("--help: %+v", r)
	}
}

func TestImportExportFsck(t *testing.T) {
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(1, 2))
	// An image with data, a hole and an all-zero written region.
	img := filepath.Join(dir, "in.img")
	data := make([]byte, 9<<20+123)
	for i := range data {
		if i < 3<<20 || i > 6<<20 {
			data[i] = byte(rng.Uint32())
		}
	}
	os.WriteFile(img, data, 0o644)
	if r := vblock(t, dir, "import", "v", img); r.code != 0 {
		t.Fatalf("import: %+v", r)
	}
	if r := vblock(t, dir, "inspect", "v"); !strings.Contains(r.stdout, "size:          9 MiB (9441280 bytes)") {
		t.Fatalf("inspect after import:\n%s", r.stdout)
	}
	out := filepath.Join(dir, "out.img")
	if r := vblock(t, dir, "export", "v", out); r.code != 0 {
		t.Fatalf("export: %+v", r)
	}
	got, _ := os.ReadFile(out)
	if len(got) != 9441280 || !bytes.Equal(got[:len(data)], data) || !bytes.Equal(got[len(data):], make([]byte, len(got)-len(data))) {
		t.Fatal("exported image differs from the imported one")
	}
	if r := vblock(t, dir, "export", "v", out); r.code != 1 || !strings.Contains(r.stderr, "--force") {
		t.Fatalf("export over an existing file: %+v", r)
	}
	// Import into the existing volume: zeros overwrite old data.
	data2 := make([]byte, 4<<20)
	copy(data2, "hello")
	os.WriteFile(img, data2, 0o644)
	if r := vblock(t, dir, "import", "v", img); r.code != 0 {
		t.Fatalf("re-import: %+v", r)
	}
	if r := vblock(t, dir, "export", "--force", "v", out); r.code != 0 {
		t.Fatalf("export --force: %+v", r)
	}
	got, _ = os.ReadFile(out)
	if !bytes.Equal(got[:4<<20], data2) || !bytes.Equal(got[4<<20:len(data)], data[4<<20:]) {
		t.Fatal("re-import did not overwrite exactly its range")
	}
	if r := vblock(t, dir, "fsck", "v"); r.code != 0 || !strings.Contains(r.stdout, "volume v: ok") {
		t.Fatalf("fsck: %+v", r)
	}

	// Damage one byte of one chunk's block data: fsck exits 3 and names it.
	chunks, _ := filepath.Glob(filepath.Join(dir, "store", "v", "chunks", "*"))
	if len(chunks) == 0 {
		t.Fatal("no chunks")
	}
	b, _ := os.ReadFile(chunks[0])
	b[4096+100] ^= 0xff
	os.WriteFile(chunks[0], b, 0o644)
	r := vblock(t, dir, "fsck", "v")
	if r.code != 3 || !strings.Contains(r.stdout, "CORRUPT: chunk v/chunks/"+filepath.Base(chunks[0])) {
		t.Fatalf("fsck of a damaged chunk: %+v", r)
	}
	// A missing chunk, and a damaged manifest.
	os.Remove(chunks[0])
	if r := vblock(t, dir, "fsck", "v"); r.code != 3 || !strings.Contains(r.stdout, "missing") {
		t.Fatalf("fsck with a missing chunk: %+v", r)
	}
	m := filepath.Join(dir, "store", "v", "manifest")
	b, _ = os.ReadFile(m)
	b[20] ^= 1
	os.WriteFile(m, b, 0o644)
	if r := vblock(t, dir, "fsck", "v"); r.code != 3 || !strings.Contains(r.stdout, "CORRUPT: manifest: manifest is corrupt") {
		t.Fatalf("fsck with a damaged manifest: %+v", r)
	}
}

// TestFsckSnapshotsAndClones: fsck follows snapshots and a clone's
// references into its parent's chunks.
func TestFsckSnapshotsAndClones(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "in.img")
	data := bytes.Repeat([]byte("snapshot me "), 1<<18)
	os.WriteFile(img, data, 0o644)
	if r := vblock(t, dir, "import", "src", img); r.code != 0 {
		t.Fatalf("import: %+v", r)
	}
	ctx := context.Background()
	store, err := backend.Open(ctx, "file://"+filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := vb.CreateSnapshot(ctx, store, "src", "s1", vb.SnapshotOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := vb.Clone(ctx, store, "src", "s1", "copy", 0); err != nil {
		t.Fatal(err)
	}
	// Overwrite the source: the snapshot keeps the old chunks alive.
	os.WriteFile(img, bytes.Repeat([]byte{9}, 1<<20), 0o644)
	if r := vblock(t, dir, "import", "src", img); r.code != 0 {
		t.Fatalf("re-import: %+v", r)
	}
	if r := vblock(t, dir, "inspect", "src"); !strings.Contains(r.stdout, "s1") {
		t.Errorf("inspect does not list the snapshot:\n%s", r.stdout)
	}
	if r := vblock(t, dir, "inspect", "copy"); !strings.Contains(r.stdout, "src@s1") {
		t.Errorf("inspect does not show the parent:\n%s", r.stdout)
	}
	for _, v := range []string{"src", "copy"} {
		if r := vblock(t, dir, "fsck", v); r.code != 0 {
			t.Fatalf("fsck %s: %+v", v, r)
		}
	}
	// Damage a chunk only the snapshot (and the clone) still use.
	chunks, _ := filepath.Glob(filepath.Join(dir, "store", "src", "chunks", "*"))
	sort.Strings(chunks)
	b, _ := os.ReadFile(chunks[0])
	b[len(b)-100] ^= 1
	os.WriteFile(chunks[0], b, 0o644)
	for _, v := range []string{"src", "copy"} {
		if r := vblock(t, dir, "fsck", v); r.code != 3 {
			t.Errorf("fsck %s with a damaged shared chunk: %+v", v, r)
		}
	}
}

// TestImportRefusesOpenVolume: import does not fence a running server
// unless told to.
func TestImportRefusesOpenVolume(t *testing.T) {
	dir := t.TempDir()
	vblock(t, dir, "create", "v", "--size", "1MiB")
	ctx := context.Background()
	store, _ := backend.Open(ctx, "file://"+filepath.Join(dir, "store"))
	v, err := vb.Open(ctx, store, "v", vb.Options{WALDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	img := filepath.Join(dir, "img")
	os.WriteFile(img, []byte("data"), 0o644)
	if r := vblock(t, dir, "import", "v", img); r.code != 1 || !strings.Contains(r.stderr, "--force") {
		t.Fatalf("import into an open volume: %+v", r)
	}
	if r := vblock(t, dir, "import", "--force", "v", img); r.code != 0 {
		t.Fatalf("import --force: %+v", r)
	}
	if _, err := v.WriteAt([]byte("x"), 0); err == nil {
		if err := v.Drain(ctx); !errors.Is(err, vb.ErrFenced) {
			t.Errorf("the old owner was not fenced: %v", err)
		}
	}
}

func TestImportStdinNeedsSize(t *testing.T) {
	dir := t.TempDir()
	r, w, _ := os.Pipe()
	old := os.Stdin
	os.Stdin = r
	defer func() { os.Stdin = old }()
	go func() { w.Write(bytes.Repeat([]byte{7}, 10000)); w.Close() }()
	if res := vblock(t, dir, "import", "v", "-"); res.code != 2 || !strings.Contains(res.stderr, "--size") {
		t.Fatalf("import - without --size: %+v", res)
	}
	if res := vblock(t, dir, "import", "v", "-", "--size", "1MiB"); res.code != 0 {
		t.Fatalf("import - --size: %+v", res)
	}
	out := filepath.Join(dir, "o")
	vblock(t, dir, "export", "v", out)
	got, _ := os.ReadFile(out)
	if len(got) != 1<<20 || !bytes.Equal(got[:10000], bytes.Repeat([]byte{7}, 10000)) {
		t.Fatal("stdin import round trip failed")
	}
}

func TestLoadDir(t *testing.T) {
	if _, err := os.Stat("/sbin/mkfs.ext4"); err != nil {
		if _, err := os.Stat("/usr/sbin/mkfs.ext4"); err != nil {
			testutil.Skip(t, "mkfs.ext4", "mkfs.ext4 is not installed in /sbin or /usr/sbin (e2fsprogs)")
		}
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	os.MkdirAll(filepath.Join(src, "sub"), 0o755)
	os.WriteFile(filepath.Join(src, "sub", "hello.txt"), []byte("hello viperblock\n"), 0o644)
	r := vblock(t, dir, "load-dir", "fsvol", src)
	if r.code != 0 {
		t.Fatalf("load-dir: %+v", r)
	}
	if r := vblock(t, dir, "load-dir", "fsvol", src); r.code != 1 || !strings.Contains(r.stderr, "--force") {
		t.Fatalf("load-dir onto an existing volume: %+v", r)
	}
	out := filepath.Join(dir, "fs.img")
	vblock(t, dir, "export", "fsvol", out)
	// The ext4 superblock magic 0xEF53 at byte 1024+56.
	b, _ := os.ReadFile(out)
	if len(b) < 2048 || b[1024+56] != 0x53 || b[1024+57] != 0xef {
		t.Fatal("the volume does not hold an ext4 filesystem")
	}
	if _, err := os.Stat("/usr/sbin/debugfs"); err == nil {
		// debugfs can read the file without mounting.
		got := runCmd(t, "/usr/sbin/debugfs", "-R", "cat /sub/hello.txt", out)
		if !strings.Contains(got, "hello viperblock") {
			t.Fatalf("debugfs cat: %q", got)
		}
	}
}

// create --durability records the class; inspect shows it; a bad class is
// a usage error.
func TestCreateDurability(t *testing.T) {
	dir := t.TempDir()
	if r := vblock(t, dir, "create", "v", "--size", "1MiB", "--durability", "store"); r.code != 0 {
		t.Fatalf("create: %+v", r)
	}
	if r := vblock(t, dir, "inspect", "v"); r.code != 0 || !strings.Contains(strings.Join(strings.Fields(r.stdout), " "), "durability: store") {
		t.Fatalf("inspect: %+v", r)
	}
	if r := vblock(t, dir, "create", "w", "--size", "1MiB", "--durability", "disk"); r.code != 2 || !strings.Contains(r.stderr, "want node or store") {
		t.Fatalf("create --durability disk: %+v", r)
	}
}

// TestFsckRebuild: fsck --rebuild rebuilds a damaged, then a deleted,
// manifest from the chunks; the volume exports as imported; a good
// manifest is left alone.
func TestFsckRebuild(t *testing.T) {
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(3, 4))
	img := filepath.Join(dir, "in.img")
	data := make([]byte, 6<<20)
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	os.WriteFile(img, data, 0o644)
	if r := vblock(t, dir, "import", "v", img); r.code != 0 {
		t.Fatalf("import: %+v", r)
	}
	m := filepath.Join(dir, "store", "v", "manifest")
	b, _ := os.ReadFile(m)
	b[20] ^= 1
	os.WriteFile(m, b, 0o644)
	if r := vblock(t, dir, "fsck", "v"); r.code != 3 || !strings.Contains(r.stderr, "--rebuild") {
		t.Fatalf("fsck with a damaged manifest: %+v", r)
	}
	r := vblock(t, dir, "fsck", "--rebuild", "v")
	if r.code != 0 || !strings.Contains(r.stdout, "damaged manifest is kept as v/manifest.broken-") || !strings.Contains(r.stdout, "volume v: ok") {
		t.Fatalf("fsck --rebuild of a damaged manifest: %+v", r)
	}
	out := filepath.Join(dir, "out.img")
	check := func() {
		t.Helper()
		if r := vblock(t, dir, "export", "--force", "v", out); r.code != 0 {
			t.Fatalf("export: %+v", r)
		}
		if got, _ := os.ReadFile(out); !bytes.Equal(got, data) {
			t.Fatalf("the rebuilt volume differs from the image (%d bytes, want %d)", len(got), len(data))
		}
	}
	check()
	if r := vblock(t, dir, "fsck", "--rebuild", "v"); r.code != 0 || !strings.Contains(r.stdout, "intact; not rebuilt") {
		t.Fatalf("fsck --rebuild of a good manifest: %+v", r)
	}
	os.Remove(m)
	if r := vblock(t, dir, "fsck", "--rebuild", "--size", "8MiB", "v"); r.code != 0 || !strings.Contains(r.stdout, "size 8 MiB") {
		t.Fatalf("fsck --rebuild of a deleted manifest: %+v", r)
	}
	data = append(data, make([]byte, 2<<20)...)
	check()
}
