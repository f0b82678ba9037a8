package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// vblockEnv runs the CLI with extra environment variables.
func vblockEnv(t *testing.T, dir string, env map[string]string, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	all := map[string]string{envStore: "file://" + filepath.Join(dir, "store")}
	for k, v := range env {
		all[k] = v
	}
	code := run(context.Background(), args, &out, &errb, func(k string) string { return all[k] })
	return result{code, out.String(), errb.String()}
}

func writeKey(t *testing.T, dir, name string, b byte, b64 bool) string {
	t.Helper()
	k := bytes.Repeat([]byte{b}, 32)
	data := k
	if b64 {
		data = []byte(base64.StdEncoding.EncodeToString(k) + "\n")
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func hashDir(t *testing.T, dir string) string {
	t.Helper()
	h := sha256.New()
	filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			b, _ := os.ReadFile(p)
			fmt.Fprintf(h, "%s %d\n", p, len(b))
			h.Write(b)
		}
		return nil
	})
	return hex.EncodeToString(h.Sum(nil))
}

func TestEncryptedVolumeCLI(t *testing.T) {
	dir := t.TempDir()
	k1 := writeKey(t, dir, "k1", 1, true)
	k2 := writeKey(t, dir, "k2", 2, false)
	bad := filepath.Join(dir, "bad")
	os.WriteFile(bad, []byte("not a key\n"), 0o600)

	if r := vblock(t, dir, "create", "v", "--size", "4MiB", "--encryption-key-file", bad); r.code != 1 || !strings.Contains(r.stderr, bad) {
		t.Fatalf("create with a bad key file: %+v", r)
	}
	if r := vblock(t, dir, "create", "v", "--size", "4MiB", "--compression", "brotli"); r.code != 2 {
		t.Fatalf("create with an unknown compression: %+v", r)
	}
	if r := vblock(t, dir, "create", "v", "--size", "4MiB", "--encryption-key-file", k1, "--compression", "zstd"); r.code != 0 || !strings.Contains(r.stdout, "encrypted, zstd compression") {
		t.Fatalf("create: %+v", r)
	}
	img := filepath.Join(dir, "img")
	data := make([]byte, 1<<20)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		if i < len(data)/2 {
			data[i] = byte(rng.Uint32())
		} else {
			data[i] = "compressible "[i%13]
		}
	}
	os.WriteFile(img, data, 0o644)
	wal := filepath.Join(dir, "wal")
	// The key comes from the environment as well as from the flag.
	if r := vblockEnv(t, dir, map[string]string{envKeyFile: k1}, "import", "v", img, "--wal-dir", wal, "--progress", "never"); r.code != 0 {
		t.Fatalf("import: %+v", r)
	}
	before := hashDir(t, dir)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "no key was given"},
		{[]string{"--encryption-key-file", k2}, "wrong key"},
	} {
		for _, cmd := range [][]string{{"import", "v", img, "--wal-dir", wal, "--progress", "never"}, {"export", "v", filepath.Join(dir, "out"), "--progress", "never"}} {
			r := vblock(t, dir, append(cmd, tc.args...)...)
			if r.code != 1 || !strings.Contains(r.stderr, tc.want) || !strings.Contains(r.stderr, "encryption key") {
				t.Errorf("%s %v: %+v", cmd[0], tc.args, r)
			}
		}
	}
	if hashDir(t, dir) != before {
		t.Fatal("a refused command changed the store or the WAL")
	}
	out := filepath.Join(dir, "out")
	if r := vblock(t, dir, "export", "v", out, "--encryption-key-file", k1, "--progress", "never"); r.code != 0 {
		t.Fatalf("export: %+v", r)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got[:len(data)], data) {
		t.Fatal("exported data differs")
	}
	r := vblock(t, dir, "inspect", "v")
	if !strings.Contains(r.stdout, "encrypted:     yes") || !strings.Contains(r.stdout, "compression:   zstd") {
		t.Errorf("inspect:\n%s", r.stdout)
	}
	if r := vblock(t, dir, "inspect", "v", "--json"); !strings.Contains(r.stdout, `"CompressionRatio"`) || !strings.Contains(r.stdout, `"Encrypted": true`) {
		t.Errorf("inspect --json:\n%s", r.stdout)
	}
	if r := vblock(t, dir, "fsck", "v", "--encryption-key-file", k1); r.code != 0 || !strings.Contains(r.stdout, "every authentication tag verified") {
		t.Fatalf("fsck: %+v", r)
	}
	// Rekey: the old key stops working, the new one works.
	if r := vblock(t, dir, "rekey", "v", "--encryption-key-file", k1); r.code != 2 {
		t.Fatalf("rekey without the new key: %+v", r)
	}
	if r := vblock(t, dir, "rekey", "v", "--encryption-key-file", k1, "--new-encryption-key-file", k2); r.code != 0 {
		t.Fatalf("rekey: %+v", r)
	}
	if r := vblock(t, dir, "export", "v", out, "--force", "--encryption-key-file", k1, "--progress", "never"); r.code != 1 || !strings.Contains(r.stderr, "wrong key") {
		t.Fatalf("export with the old key: %+v", r)
	}
	if r := vblock(t, dir, "export", "v", out, "--force", "--encryption-key-file", k2, "--progress", "never"); r.code != 0 {
		t.Fatalf("export with the new key: %+v", r)
	}
	// A flipped bit in a chunk: fsck reports corruption (exit 3).
	chunks, _ := filepath.Glob(filepath.Join(dir, "store", "v", "chunks", "*"))
	if len(chunks) == 0 {
		t.Fatal("no chunks")
	}
	b, _ := os.ReadFile(chunks[0])
	b[len(b)-100] ^= 0x04
	os.WriteFile(chunks[0], b, 0o644)
	if r := vblock(t, dir, "fsck", "v", "--encryption-key-file", k2); r.code != 3 || !strings.Contains(r.stdout, "CORRUPT") {
		t.Fatalf("fsck of a flipped bit: %+v", r)
	}
}
