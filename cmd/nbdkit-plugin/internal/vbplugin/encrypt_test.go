package vbplugin

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
)

// TestEncryptionKeyFile: encryption_key_file= creates (with size=) and
// opens an encrypted volume; a missing or wrong key fails GetReady with a
// message naming the key; a key file that is not a key fails Complete.
func TestEncryptionKeyFile(t *testing.T) {
	dir := t.TempDir()
	key := func(name string, b byte) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{b}, 32))), 0o600)
		return p
	}
	k1, k2 := key("k1", 1), key("k2", 2)
	store := memStore(t)
	cfg := func(keyFile, size string) *Plugin {
		p := New(nil)
		for k, v := range map[string]string{"volume": "vol", "store": store, "wal_dir": t.TempDir(), "size": size, "encryption_key_file": keyFile} {
			if v == "" {
				continue
			}
			if err := p.Cfg.Set(k, v); err != nil {
				t.Fatal(err)
			}
		}
		return p
	}
	p := cfg(k1, "1MiB")
	if err := p.Cfg.Complete(nil); err != nil {
		t.Fatal(err)
	}
	if err := p.GetReady(context.Background()); err != nil {
		t.Fatal(err)
	}
	c, _ := p.Open(false)
	data := bytes.Repeat([]byte("sealed"), 1000)
	if err := c.Pwrite(data, 4096, true); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := p.Cleanup(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ file, want string }{{"", "no key was given"}, {k2, "wrong key"}} {
		q := cfg(tc.file, "")
		if err := q.Cfg.Complete(func(string) string { return "" }); err != nil {
			t.Fatal(err)
		}
		err := q.GetReady(context.Background())
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "encryption_key_file") {
			t.Fatalf("key %q: %v", tc.file, err)
		}
	}
	bad := filepath.Join(dir, "bad")
	os.WriteFile(bad, []byte("xyz"), 0o600)
	if err := cfg(bad, "").Cfg.Complete(nil); err == nil || !errors.Is(err, vb.ErrKey) && !strings.Contains(err.Error(), bad) {
		t.Fatalf("bad key file: %v", err)
	}
	q := cfg(k1, "")
	if err := q.Cfg.Complete(nil); err != nil {
		t.Fatal(err)
	}
	if err := q.GetReady(context.Background()); err != nil {
		t.Fatal(err)
	}
	c, _ = q.Open(true)
	got := make([]byte, len(data))
	if err := c.Pread(got, 4096); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back: %v", err)
	}
	c.Close()
	q.Cleanup()
}
