package seal

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseKey(t *testing.T) {
	raw := bytes.Repeat([]byte{0xA5}, KeySize)
	b64 := base64.StdEncoding.EncodeToString(raw)
	for _, in := range [][]byte{raw, []byte(b64), []byte("  " + b64 + "\n"), []byte(strings.TrimRight(b64, "="))} {
		k, err := ParseKey(in, "f")
		if err != nil || !bytes.Equal(k[:], raw) {
			t.Fatalf("ParseKey(%q) = %x, %v", in, k, err)
		}
	}
	for _, in := range []string{"", "  \n", "short", base64.StdEncoding.EncodeToString(raw[:31]), strings.Repeat("x", 33)} {
		_, err := ParseKey([]byte(in), "/path/k")
		if !errors.Is(err, ErrKey) || !strings.Contains(err.Error(), "/path/k") {
			t.Errorf("ParseKey(%q) = %v, want ErrKey naming the file", in, err)
		}
	}
}

func TestWrapUnwrap(t *testing.T) {
	ctx := context.Background()
	var k1, k2 [KeySize]byte
	k1[0], k2[0] = 1, 2
	a, b := NewFileSource(k1, "a"), NewFileSource(k2, "b")
	if a.KEKID() == b.KEKID() {
		t.Fatal("two keys share a fingerprint")
	}
	dk := NewKey()
	w, err := a.Wrap(ctx, dk, WrapAAD("vol", 7))
	if err != nil {
		t.Fatal(err)
	}
	got, err := a.Unwrap(ctx, a.KEKID(), w, WrapAAD("vol", 7))
	if err != nil || got != dk {
		t.Fatalf("unwrap: %v", err)
	}
	if _, err := b.Unwrap(ctx, a.KEKID(), w, WrapAAD("vol", 7)); !errors.Is(err, ErrKey) || !strings.Contains(err.Error(), "wrong key") {
		t.Errorf("wrong KEK: %v", err)
	}
	if _, err := a.Unwrap(ctx, a.KEKID(), w, WrapAAD("other", 7)); !errors.Is(err, ErrKey) {
		t.Errorf("moved to another volume: %v", err)
	}
	if _, err := a.Unwrap(ctx, a.KEKID(), w, WrapAAD("vol", 8)); !errors.Is(err, ErrKey) {
		t.Errorf("moved to another id: %v", err)
	}
	w[20] ^= 1
	if _, err := a.Unwrap(ctx, a.KEKID(), w, WrapAAD("vol", 7)); !errors.Is(err, ErrKey) {
		t.Errorf("tampered: %v", err)
	}
}

func TestLoadKeyFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "k")
	if err := os.WriteFile(p, []byte(base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{3}, 32))+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKeyFile(p); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKeyFile(filepath.Join(dir, "missing")); !errors.Is(err, ErrKey) {
		t.Errorf("missing file: %v", err)
	}
}

func TestSubkeyDistinct(t *testing.T) {
	dk := NewKey()
	n := Nonce(1, 0)
	pt := make([]byte, 64)
	c1 := Subkey(dk, []byte("salt1"), "chunk", []byte{1}).Seal(nil, n[:], pt, nil)
	c2 := Subkey(dk, []byte("salt2"), "chunk", []byte{1}).Seal(nil, n[:], pt, nil)
	c3 := Subkey(dk, []byte("salt1"), "chunk", []byte{2}).Seal(nil, n[:], pt, nil)
	if bytes.Equal(c1, c2) || bytes.Equal(c1, c3) {
		t.Fatal("subkeys collide")
	}
}
