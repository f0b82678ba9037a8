package manifest

import (
	"errors"
	"reflect"
	"testing"
)

func TestV2RoundTrip(t *testing.T) {
	m := &Manifest{Name: "v", Size: 1 << 20, Compression: 1, WriteKey: 5}
	m.AddKey(WrappedKey{ID: 9, Origin: "parent", KEKID: "sha256:00", Wrapped: []byte{1, 2, 3}})
	m.AddKey(WrappedKey{ID: 5, Origin: "v", KEKID: "sha256:01", Wrapped: []byte{4}})
	b := Encode(m)
	if b[8] != 2 {
		t.Fatalf("version %d", b[8])
	}
	got, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	got.Chunks, got.Extents = nil, nil
	m.Chunks, m.Extents = nil, nil
	if !reflect.DeepEqual(got, m) {
		t.Fatalf("got %+v\nwant %+v", got, m)
	}
	// Every byte counts.
	for i := 0; i < len(b); i++ {
		c := append([]byte(nil), b...)
		c[i] ^= 4
		if _, err := Decode(c); err == nil {
			t.Fatalf("flip at %d not detected", i)
		}
	}
	// A plain volume stays version 1.
	if p := Encode(&Manifest{Name: "p", Size: 4096}); p[8] != 1 {
		t.Fatalf("plain manifest version %d", p[8])
	}
	// The write key must be in the table.
	bad := &Manifest{Name: "v", Size: 4096, WriteKey: 3}
	bad.AddKey(WrappedKey{ID: 4, Origin: "v", KEKID: "k", Wrapped: []byte{1}})
	if _, err := Decode(Encode(bad)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("missing write key: %v", err)
	}
}
