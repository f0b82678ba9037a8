// Package backendtest is a conformance suite for backend.Store
// implementations. Every store (memory, file, S3, and any wrapper around
// them) must pass it:
//
//	func TestConformance(t *testing.T) {
//		backendtest.Run(t, func(t *testing.T) backend.Store { return newEmptyStore(t) })
//	}
//
// newStore is called once per subtest and must return an empty store that no
// other subtest uses; the suite closes it when the subtest ends.
//
// The suite keeps to keys that every store can hold: no key is both an
// object and a prefix of another object's directory ("a" next to "a/b"),
// which a directory-backed store such as the file store or versitygw's posix
// backend cannot represent.
package backendtest

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

// Run runs the conformance suite as subtests of t.
func Run(t *testing.T, newStore func(t *testing.T) backend.Store) {
	t.Helper()
	RunWithOptions(t, Options{}, newStore)
}

// Options adjust a conformance run.
type Options struct {
	// Skip names subtests (e.g. "List") to skip, each with the reason: a
	// known, reported bug that is being fixed. Keep this empty normally.
	Skip map[string]string
}

// RunWithOptions is Run with options.
func RunWithOptions(t *testing.T, opts Options, newStore func(t *testing.T) backend.Store) {
	t.Helper()
	open := func(t *testing.T) (context.Context, backend.Store) {
		t.Helper()
		s := newStore(t)
		t.Cleanup(func() {
			if err := s.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		t.Cleanup(cancel)
		return ctx, s
	}
	for _, c := range []struct {
		name string
		fn   func(t *testing.T, ctx context.Context, s backend.Store)
	}{
		{"PutGetRoundTrip", testPutGet},
		{"EmptyObject", testEmptyObject},
		{"BuffersNotShared", testBuffersNotShared},
		{"GetMissing", testGetMissing},
		{"GetRange", testGetRange},
		{"GetRangeEmptyPastEnd", testGetRangeEmptyPastEnd},
		{"PutOverwriteAtomic", testPutOverwriteAtomic},
		{"PutIfCreate", testPutIfCreate},
		{"PutIfMatch", testPutIfMatch},
		{"PutIfStale", testPutIfStale},
		{"PutIfMissingWithVersion", testPutIfMissingWithVersion},
		{"PutIfRace", testPutIfRace},
		{"PutIfCreateRace", testPutIfCreateRace},
		{"Delete", testDelete},
		{"DeleteMissingDir", testDeleteMissingDir},
		{"PrefixIsNotAnObject", testPrefixIsNotAnObject},
		{"List", testList},
		{"ListSortOrder", testListSortOrder},
		{"ListDirs", testListDirs},
		{"InvalidKeys", testInvalidKeys},
		{"LargeObject", testLargeObject},
	} {
		t.Run(c.name, func(t *testing.T) {
			if why, ok := opts.Skip[c.name]; ok {
				t.Skip("known failure: " + why)
			}
			ctx, s := open(t)
			c.fn(t, ctx, s)
		})
	}
}

// pattern returns n deterministic pseudo-random bytes.
func pattern(seed uint64, n int) []byte {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	b := make([]byte, n)
	_, _ = rand.NewChaCha8(key).Read(b)
	return b
}

func mustPut(t *testing.T, ctx context.Context, s backend.Store, key string, data []byte) {
	t.Helper()
	if err := s.Put(ctx, key, data); err != nil {
		t.Fatalf("Put(%q, %d bytes): %v", key, len(data), err)
	}
}

func mustGet(t *testing.T, ctx context.Context, s backend.Store, key string) ([]byte, backend.Version) {
	t.Helper()
	d, v, err := s.Get(ctx, key)
	if err != nil {
		t.Fatalf("Get(%q): %v", key, err)
	}
	return d, v
}

// expectContent checks that key holds want and returns its version.
func expectContent(t *testing.T, ctx context.Context, s backend.Store, key string, want []byte) backend.Version {
	t.Helper()
	got, v := mustGet(t, ctx, s, key)
	if !bytes.Equal(got, want) {
		t.Fatalf("Get(%q) = %s, want %s", key, describe(got), describe(want))
	}
	if v == "" {
		t.Fatalf("Get(%q): empty Version for an existing object", key)
	}
	return v
}

func describe(b []byte) string {
	if len(b) <= 32 {
		return fmt.Sprintf("%q", b)
	}
	return fmt.Sprintf("%d bytes starting %q", len(b), b[:16])
}

func testPutGet(t *testing.T, ctx context.Context, s backend.Store) {
	a := []byte("hello, viperblock")
	mustPut(t, ctx, s, "obj", a)
	v1 := expectContent(t, ctx, s, "obj", a)
	// Reading again gives the same version.
	if _, v := mustGet(t, ctx, s, "obj"); v != v1 {
		t.Fatalf("Version changed between two reads of unchanged object: %q then %q", v1, v)
	}
	b := []byte("different content, different length")
	mustPut(t, ctx, s, "obj", b)
	v2 := expectContent(t, ctx, s, "obj", b)
	if v2 == v1 {
		t.Fatalf("Version did not change with content: %q", v1)
	}
	// Same length, different bytes.
	c := bytes.ToUpper(b)
	mustPut(t, ctx, s, "obj", c)
	if v3 := expectContent(t, ctx, s, "obj", c); v3 == v2 {
		t.Fatalf("Version did not change with same-length content: %q", v2)
	}
	// Keys in nested "directories".
	mustPut(t, ctx, s, "vol-1/chunks/00000001", a)
	expectContent(t, ctx, s, "vol-1/chunks/00000001", a)
}

func testEmptyObject(t *testing.T, ctx context.Context, s backend.Store) {
	mustPut(t, ctx, s, "empty", nil)
	expectContent(t, ctx, s, "empty", []byte{})
	d, err := s.GetRange(ctx, "empty", 0, 0)
	if err != nil || len(d) != 0 {
		t.Fatalf("GetRange(empty, 0, 0) = %d bytes, %v; want 0 bytes, nil", len(d), err)
	}
	if _, err := s.GetRange(ctx, "empty", 0, 1); !errors.Is(err, backend.ErrRange) {
		t.Fatalf("GetRange(empty, 0, 1) error = %v, want ErrRange", err)
	}
}

func testBuffersNotShared(t *testing.T, ctx context.Context, s backend.Store) {
	in := []byte("original")
	mustPut(t, ctx, s, "k", in)
	copy(in, "CHANGED!")
	got, _ := mustGet(t, ctx, s, "k")
	if string(got) != "original" {
		t.Fatalf("store kept the caller's Put buffer: got %q after the caller changed it", got)
	}
	copy(got, "XXXXXXXX")
	expectContent(t, ctx, s, "k", []byte("original"))
	r, err := s.GetRange(ctx, "k", 0, 4)
	if err != nil {
		t.Fatal(err)
	}
	copy(r, "YYYY")
	expectContent(t, ctx, s, "k", []byte("original"))

	in2 := []byte("second")
	if _, err := s.PutIf(ctx, "k2", in2, ""); err != nil {
		t.Fatal(err)
	}
	copy(in2, "SECOND")
	expectContent(t, ctx, s, "k2", []byte("second"))
}

func testGetMissing(t *testing.T, ctx context.Context, s backend.Store) {
	if d, v, err := s.Get(ctx, "missing"); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("Get(missing) = %d bytes, %q, %v; want ErrNotFound", len(d), v, err)
	}
	if _, _, err := s.Get(ctx, "no/such/dir/obj"); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("Get(no/such/dir/obj) error = %v; want ErrNotFound", err)
	}
	mustPut(t, ctx, s, "dir/obj", []byte("x"))
	if _, _, err := s.Get(ctx, "dir/other"); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("Get(dir/other) error = %v; want ErrNotFound", err)
	}
}

// testPrefixIsNotAnObject: a key that is only a prefix of other keys (a
// directory, on stores that have them) is not an object.
func testPrefixIsNotAnObject(t *testing.T, ctx context.Context, s backend.Store) {
	mustPut(t, ctx, s, "dir/obj", []byte("x"))
	if _, _, err := s.Get(ctx, "dir"); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("Get(dir) with only dir/obj stored: error = %v; want ErrNotFound", err)
	}
	if _, err := s.GetRange(ctx, "dir", 0, 1); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("GetRange(dir) with only dir/obj stored: error = %v; want ErrNotFound", err)
	}
	if err := s.Delete(ctx, "dir"); err != nil {
		t.Errorf("Delete(dir) with only dir/obj stored = %v; want nil", err)
	}
	expectContent(t, ctx, s, "dir/obj", []byte("x"))
}

func testGetRange(t *testing.T, ctx context.Context, s backend.Store) {
	const size = 10000
	data := pattern(1, size)
	mustPut(t, ctx, s, "r/obj", data)
	ok := []struct{ off, n int64 }{
		{100, 200},      // middle
		{0, size},       // whole
		{0, 1},          // first byte
		{size - 1, 1},   // last byte
		{size - 10, 10}, // tail
		{size, 0},       // zero-length at end
		{0, 0},          // zero-length at start
		{5000, 0},       // zero-length in the middle
	}
	for _, c := range ok {
		got, err := s.GetRange(ctx, "r/obj", c.off, c.n)
		if err != nil {
			t.Fatalf("GetRange(%d, %d): %v", c.off, c.n, err)
		}
		if !bytes.Equal(got, data[c.off:c.off+c.n]) {
			t.Fatalf("GetRange(%d, %d) = %s, want %s", c.off, c.n, describe(got), describe(data[c.off:c.off+c.n]))
		}
	}
	bad := []struct{ off, n int64 }{
		{size - 10, 11}, // runs past the end
		{size, 1},       // starts at the end
		{size + 100, 10},
		{0, size + 1},
		{-1, 10},
		{10, -1},
	}
	for _, c := range bad {
		if got, err := s.GetRange(ctx, "r/obj", c.off, c.n); !errors.Is(err, backend.ErrRange) {
			t.Fatalf("GetRange(%d, %d) = %d bytes, %v; want ErrRange", c.off, c.n, len(got), err)
		}
	}
	if _, err := s.GetRange(ctx, "r/missing", 0, 10); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("GetRange(missing) error = %v; want ErrNotFound", err)
	}
	if _, err := s.GetRange(ctx, "r/missing", 0, 0); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("GetRange(missing, 0, 0) error = %v; want ErrNotFound", err)
	}
	// backend.ReadRange (the store's RangeReader, if it has one) reads
	// the same bytes into the caller's buffer, with the same errors.
	for _, c := range ok {
		p := bytes.Repeat([]byte{0xAA}, int(c.n)+1)
		if err := backend.ReadRange(ctx, s, "r/obj", c.off, p[:c.n]); err != nil {
			t.Fatalf("ReadRange(%d, %d): %v", c.off, c.n, err)
		}
		if !bytes.Equal(p[:c.n], data[c.off:c.off+c.n]) || p[c.n] != 0xAA {
			t.Fatalf("ReadRange(%d, %d) = %s, want %s and the byte after untouched", c.off, c.n, describe(p[:c.n]), describe(data[c.off:c.off+c.n]))
		}
	}
	for _, c := range bad {
		if c.n < 0 {
			continue
		}
		if err := backend.ReadRange(ctx, s, "r/obj", c.off, make([]byte, c.n)); !errors.Is(err, backend.ErrRange) {
			t.Fatalf("ReadRange(%d, %d) error = %v; want ErrRange", c.off, c.n, err)
		}
	}
	if err := backend.ReadRange(ctx, s, "r/missing", 0, make([]byte, 10)); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("ReadRange(missing) error = %v; want ErrNotFound", err)
	}
}

func testGetRangeEmptyPastEnd(t *testing.T, ctx context.Context, s backend.Store) {
	mustPut(t, ctx, s, "r/obj", []byte("0123456789"))
	if got, err := s.GetRange(ctx, "r/obj", 11, 0); !errors.Is(err, backend.ErrRange) {
		t.Fatalf("GetRange(11, 0) of a 10-byte object = %d bytes, %v; want ErrRange", len(got), err)
	}
}

// testPutOverwriteAtomic overwrites an object again and again while readers
// check that every read returns one complete version.
func testPutOverwriteAtomic(t *testing.T, ctx context.Context, s backend.Store) {
	const size = 256 << 10
	versions := [][]byte{pattern(10, size), pattern(11, size), pattern(12, size/2)}
	mustPut(t, ctx, s, "atomic", versions[0])
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	reads := make([]int, 4)
	for r := range reads {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				got, v, err := s.Get(ctx, "atomic")
				if err != nil {
					errs <- fmt.Errorf("get during overwrite: %w", err)
					return
				}
				if v == "" {
					errs <- errors.New("get during overwrite: empty version")
					return
				}
				if !slices.ContainsFunc(versions, func(w []byte) bool { return bytes.Equal(w, got) }) {
					errs <- fmt.Errorf("get during overwrite returned a torn object: %s", describe(got))
					return
				}
				reads[r]++
			}
		}()
	}
	for i := 1; i <= 30; i++ {
		if err := s.Put(ctx, "atomic", versions[i%len(versions)]); err != nil {
			t.Errorf("Put: %v", err)
			break
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	expectContent(t, ctx, s, "atomic", versions[30%len(versions)])
}

func testPutIfCreate(t *testing.T, ctx context.Context, s backend.Store) {
	a := []byte("first")
	v, err := s.PutIf(ctx, "m/manifest", a, "")
	if err != nil {
		t.Fatalf("PutIf(absent, \"\"): %v", err)
	}
	if v == "" {
		t.Fatal("PutIf returned an empty version")
	}
	if got := expectContent(t, ctx, s, "m/manifest", a); got != v {
		t.Fatalf("PutIf returned version %q, Get says %q", v, got)
	}
	// Again with the same content: still a lost race, not an idempotent success.
	if _, err := s.PutIf(ctx, "m/manifest", a, ""); !errors.Is(err, backend.ErrPrecondition) {
		t.Fatalf("second PutIf(\"\") with same content error = %v; want ErrPrecondition", err)
	}
	if _, err := s.PutIf(ctx, "m/manifest", []byte("second"), ""); !errors.Is(err, backend.ErrPrecondition) {
		t.Fatalf("second PutIf(\"\") error = %v; want ErrPrecondition", err)
	}
	if got := expectContent(t, ctx, s, "m/manifest", a); got != v {
		t.Fatalf("version changed after failed PutIf: %q -> %q", v, got)
	}
}

func testPutIfMatch(t *testing.T, ctx context.Context, s backend.Store) {
	mustPut(t, ctx, s, "m/manifest", []byte("v1"))
	_, v1 := mustGet(t, ctx, s, "m/manifest")
	v2, err := s.PutIf(ctx, "m/manifest", []byte("v2 longer"), v1)
	if err != nil {
		t.Fatalf("PutIf(current version): %v", err)
	}
	if v2 == "" || v2 == v1 {
		t.Fatalf("PutIf returned version %q (previous %q)", v2, v1)
	}
	if got := expectContent(t, ctx, s, "m/manifest", []byte("v2 longer")); got != v2 {
		t.Fatalf("PutIf returned version %q, Get says %q", v2, got)
	}
	// Chain with the returned version, without a Get in between.
	v3, err := s.PutIf(ctx, "m/manifest", []byte("v3"), v2)
	if err != nil {
		t.Fatalf("PutIf(version returned by PutIf): %v", err)
	}
	if got := expectContent(t, ctx, s, "m/manifest", []byte("v3")); got != v3 {
		t.Fatalf("PutIf returned version %q, Get says %q", v3, got)
	}
	// A PutIf-created object can be updated with the version PutIf returned.
	c1, err := s.PutIf(ctx, "m/other", []byte("c1"), "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutIf(ctx, "m/other", []byte("c2"), c1); err != nil {
		t.Fatalf("PutIf(version returned by create): %v", err)
	}
	expectContent(t, ctx, s, "m/other", []byte("c2"))
}

func testPutIfStale(t *testing.T, ctx context.Context, s backend.Store) {
	mustPut(t, ctx, s, "m/manifest", []byte("v1"))
	_, v1 := mustGet(t, ctx, s, "m/manifest")
	mustPut(t, ctx, s, "m/manifest", []byte("v2"))
	_, v2 := mustGet(t, ctx, s, "m/manifest")
	if _, err := s.PutIf(ctx, "m/manifest", []byte("v3"), v1); !errors.Is(err, backend.ErrPrecondition) {
		t.Fatalf("PutIf(stale version) error = %v; want ErrPrecondition", err)
	}
	if got := expectContent(t, ctx, s, "m/manifest", []byte("v2")); got != v2 {
		t.Fatalf("version changed after failed PutIf: %q -> %q", v2, got)
	}
	if _, err := s.PutIf(ctx, "m/manifest", []byte("v3"), "not-a-version"); !errors.Is(err, backend.ErrPrecondition) {
		t.Fatalf("PutIf(bogus version) error = %v; want ErrPrecondition", err)
	}
	expectContent(t, ctx, s, "m/manifest", []byte("v2"))
	// The version of a deleted-and-recreated object with other content is stale too.
	if err := s.Delete(ctx, "m/manifest"); err != nil {
		t.Fatal(err)
	}
	mustPut(t, ctx, s, "m/manifest", []byte("v4"))
	if _, err := s.PutIf(ctx, "m/manifest", []byte("v5"), v2); !errors.Is(err, backend.ErrPrecondition) {
		t.Fatalf("PutIf(version of deleted object) error = %v; want ErrPrecondition", err)
	}
	expectContent(t, ctx, s, "m/manifest", []byte("v4"))
}

func testPutIfMissingWithVersion(t *testing.T, ctx context.Context, s backend.Store) {
	mustPut(t, ctx, s, "m/manifest", []byte("v1"))
	_, v1 := mustGet(t, ctx, s, "m/manifest")
	if err := s.Delete(ctx, "m/manifest"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutIf(ctx, "m/manifest", []byte("v2"), v1); !errors.Is(err, backend.ErrPrecondition) {
		t.Fatalf("PutIf(missing object, some version) error = %v; want ErrPrecondition", err)
	}
	if _, _, err := s.Get(ctx, "m/manifest"); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("failed PutIf created the object: Get error = %v", err)
	}
}

const racers = 8

// testPutIfRace: N writers holding the same base version race; exactly one
// may win and its content and version are what the store then holds.
func testPutIfRace(t *testing.T, ctx context.Context, s backend.Store) {
	for round := 0; round < 3; round++ {
		mustPut(t, ctx, s, "race/manifest", []byte(fmt.Sprintf("base %d", round)))
		_, base := mustGet(t, ctx, s, "race/manifest")
		raceOnce(t, ctx, s, "race/manifest", base, round)
	}
}

// testPutIfCreateRace: N writers race to create the same object.
func testPutIfCreateRace(t *testing.T, ctx context.Context, s backend.Store) {
	for round := 0; round < 3; round++ {
		raceOnce(t, ctx, s, fmt.Sprintf("race/new-%d", round), "", round)
	}
}

func raceOnce(t *testing.T, ctx context.Context, s backend.Store, key string, base backend.Version, round int) {
	t.Helper()
	type result struct {
		i   int
		v   backend.Version
		err error
	}
	data := func(i int) []byte {
		return []byte(fmt.Sprintf("writer %d round %d %s", i, round, strings.Repeat("x", i*100)))
	}
	results := make(chan result, racers)
	start := make(chan struct{})
	for i := 0; i < racers; i++ {
		go func() {
			<-start
			v, err := s.PutIf(ctx, key, data(i), base)
			results <- result{i, v, err}
		}()
	}
	close(start)
	winner := -1
	var winV backend.Version
	for i := 0; i < racers; i++ {
		r := <-results
		switch {
		case r.err == nil:
			if winner >= 0 {
				t.Errorf("round %d: writers %d and %d both won the PutIf race on %q (base %q)", round, winner, r.i, key, base)
			}
			winner, winV = r.i, r.v
		case errors.Is(r.err, backend.ErrPrecondition):
		default:
			t.Errorf("round %d: writer %d: unexpected error %v", round, r.i, r.err)
		}
	}
	if winner < 0 {
		t.Fatalf("round %d: no writer won the PutIf race on %q (base %q)", round, key, base)
	}
	if got := expectContent(t, ctx, s, key, data(winner)); got != winV {
		t.Fatalf("round %d: winner got version %q, store holds %q", round, winV, got)
	}
}

func testDelete(t *testing.T, ctx context.Context, s backend.Store) {
	if err := s.Delete(ctx, "missing"); err != nil {
		t.Fatalf("Delete(missing) = %v; want nil", err)
	}
	mustPut(t, ctx, s, "d/obj", []byte("x"))
	mustPut(t, ctx, s, "d/keep", []byte("y"))
	if err := s.Delete(ctx, "d/obj"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, _, err := s.Get(ctx, "d/obj"); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("Get after Delete error = %v; want ErrNotFound", err)
	}
	if _, err := s.GetRange(ctx, "d/obj", 0, 1); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("GetRange after Delete error = %v; want ErrNotFound", err)
	}
	if err := s.Delete(ctx, "d/obj"); err != nil {
		t.Fatalf("second Delete = %v; want nil", err)
	}
	expectContent(t, ctx, s, "d/keep", []byte("y"))
	if keys, err := s.List(ctx, "d/"); err != nil || !slices.Equal(keys, []string{"d/keep"}) {
		t.Fatalf("List(d/) after Delete = %q, %v; want [d/keep]", keys, err)
	}
	// After a delete the key is absent again for PutIf.
	if _, err := s.PutIf(ctx, "d/obj", []byte("z"), ""); err != nil {
		t.Fatalf("PutIf(\"\") after Delete: %v", err)
	}
	expectContent(t, ctx, s, "d/obj", []byte("z"))
}

func testDeleteMissingDir(t *testing.T, ctx context.Context, s backend.Store) {
	if err := s.Delete(ctx, "no/such/dir"); err != nil {
		t.Fatalf("Delete(no/such/dir) = %v; want nil", err)
	}
	mustPut(t, ctx, s, "some/obj", []byte("x"))
	if err := s.Delete(ctx, "some/other/obj"); err != nil {
		t.Fatalf("Delete(some/other/obj) = %v; want nil", err)
	}
}

func testList(t *testing.T, ctx context.Context, s backend.Store) {
	keys := []string{
		"vol/chunks/0002",
		"vol/chunks/0001",
		"vol/chunks/0010",
		"vol/manifest",
		"vol/snap/s1",
		"volume/x",
		"other/y",
		"a",
		"Z",
	}
	for i, k := range keys {
		mustPut(t, ctx, s, k, []byte(fmt.Sprintf("object %d", i)))
	}
	sorted := slices.Clone(keys)
	slices.Sort(sorted)
	filter := func(p string) []string {
		var out []string
		for _, k := range sorted {
			if strings.HasPrefix(k, p) {
				out = append(out, k)
			}
		}
		return out
	}
	for _, p := range []string{
		"",
		"vol/",
		"vol/chunks/",
		"vol/chunks/000",
		"vol/chunks/0001",
		"vol",
		"vol/snap",
		"other/",
		"nothing/",
		"nothing",
		"vol/nothing/",
		"a",
	} {
		got, err := s.List(ctx, p)
		if err != nil {
			t.Fatalf("List(%q): %v", p, err)
		}
		if want := filter(p); !slices.Equal(got, want) {
			t.Errorf("List(%q) = %q, want %q", p, got, want)
		}
	}
}

// testListSortOrder: List sorts by byte order, so "vol-2/x" and "vol.b"
// ('-' and '.' sort before '/') come before "vol/x", whatever the order a
// directory walk finds them in.
func testListSortOrder(t *testing.T, ctx context.Context, s backend.Store) {
	keys := []string{"vol/x", "vol-2/manifest", "vol.b", "vol_c", "volume/x", "vol/chunks/0001", "vol0"}
	for _, k := range keys {
		mustPut(t, ctx, s, k, []byte(k))
	}
	want := slices.Clone(keys)
	slices.Sort(want)
	for _, p := range []string{"", "vol"} {
		got, err := s.List(ctx, p)
		if err != nil {
			t.Fatalf("List(%q): %v", p, err)
		}
		if !slices.Equal(got, want) {
			t.Errorf("List(%q) = %q, want %q", p, got, want)
		}
	}
	if got, err := s.List(ctx, "vol-"); err != nil || !slices.Equal(got, []string{"vol-2/manifest"}) {
		t.Errorf("List(\"vol-\") = %q, %v; want [vol-2/manifest]", got, err)
	}
}

var invalidKeys = []string{
	"",
	"../x",
	"..",
	".",
	"a/../b",
	"a//b",
	"/a",
	"a/",
	"a/.b",
	".hidden",
	"a/./b",
	"a\x00b",
	"a\nb",
	"a\tb",
	"a\x7fb",
	"a b",
	"a\\b",
	"a/b\x01",
	"ä",
	strings.Repeat("x", 129),
	"ok/" + strings.Repeat("y", 129),
}

func testInvalidKeys(t *testing.T, ctx context.Context, s backend.Store) {
	for _, k := range invalidKeys {
		if _, _, err := s.Get(ctx, k); !errors.Is(err, backend.ErrInvalidKey) {
			t.Errorf("Get(%q) error = %v; want ErrInvalidKey", k, err)
		}
		if _, err := s.GetRange(ctx, k, 0, 1); !errors.Is(err, backend.ErrInvalidKey) {
			t.Errorf("GetRange(%q) error = %v; want ErrInvalidKey", k, err)
		}
		if err := s.Put(ctx, k, []byte("x")); !errors.Is(err, backend.ErrInvalidKey) {
			t.Errorf("Put(%q) error = %v; want ErrInvalidKey", k, err)
		}
		if _, err := s.PutIf(ctx, k, []byte("x"), ""); !errors.Is(err, backend.ErrInvalidKey) {
			t.Errorf("PutIf(%q) error = %v; want ErrInvalidKey", k, err)
		}
		if err := s.Delete(ctx, k); !errors.Is(err, backend.ErrInvalidKey) {
			t.Errorf("Delete(%q) error = %v; want ErrInvalidKey", k, err)
		}
	}
	for _, p := range []string{"../", "..", "a//", "/", "a/.b", "a\x00", "a/../"} {
		if _, err := s.List(ctx, p); !errors.Is(err, backend.ErrInvalidKey) {
			t.Errorf("List(%q) error = %v; want ErrInvalidKey", p, err)
		}
	}
	// Nothing was written.
	if keys, err := s.List(ctx, ""); err != nil || len(keys) != 0 {
		t.Errorf("List(\"\") after invalid writes = %q, %v; want nothing", keys, err)
	}
	// The longest valid segment works.
	long := strings.Repeat("x", 128)
	mustPut(t, ctx, s, long+"/"+long, []byte("long"))
	expectContent(t, ctx, s, long+"/"+long, []byte("long"))
}

func testLargeObject(t *testing.T, ctx context.Context, s backend.Store) {
	const size = 8 << 20
	data := pattern(42, size)
	mustPut(t, ctx, s, "big/chunk", data)
	expectContent(t, ctx, s, "big/chunk", data)
	for _, c := range []struct{ off, n int64 }{{0, 4096}, {size - 4096, 4096}, {3 << 20, 1 << 20}, {1, size - 2}} {
		got, err := s.GetRange(ctx, "big/chunk", c.off, c.n)
		if err != nil {
			t.Fatalf("GetRange(%d, %d): %v", c.off, c.n, err)
		}
		if !bytes.Equal(got, data[c.off:c.off+c.n]) {
			t.Fatalf("GetRange(%d, %d) returned wrong bytes", c.off, c.n)
		}
	}
	// A large conditional write, as a big manifest would be.
	data2 := pattern(43, size)
	_, v := mustGet(t, ctx, s, "big/chunk")
	v2, err := s.PutIf(ctx, "big/chunk", data2, v)
	if err != nil {
		t.Fatalf("PutIf(8 MiB): %v", err)
	}
	if got := expectContent(t, ctx, s, "big/chunk", data2); got != v2 {
		t.Fatalf("PutIf returned version %q, Get says %q", v2, got)
	}
}

// testListDirs: ListDirs lists one level, each name once and sorted,
// names only directories that hold an object (a deleted object's directory
// may stay behind on a file store), and agrees with List.
func testListDirs(t *testing.T, ctx context.Context, s backend.Store) {
	keys := []string{"vol/chunks/0001", "vol/chunks/0002", "vol/manifest", "vol-2/manifest", "vol.b", "a/b/c/d",
		"gone/chunks/0001", "csi.meta/publish/vol"}
	for _, k := range keys {
		mustPut(t, ctx, s, k, []byte(k))
	}
	if err := s.Delete(ctx, "gone/chunks/0001"); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string][]string{
		"":         {"a", "csi.meta", "vol", "vol-2"},
		"vol/":     {"chunks"},
		"a/":       {"b"},
		"a/b/":     {"c"},
		"gone/":    nil,
		"nothing/": nil,
	} {
		got, err := backend.ListDirs(ctx, s, p)
		if err != nil {
			t.Fatalf("ListDirs(%q): %v", p, err)
		}
		if !slices.Equal(got, want) {
			t.Errorf("ListDirs(%q) = %q, want %q", p, got, want)
		}
	}
	if _, err := backend.ListDirs(ctx, s, "vol"); !errors.Is(err, backend.ErrInvalidKey) {
		t.Errorf("ListDirs(\"vol\") = %v, want ErrInvalidKey (a prefix must end with '/')", err)
	}
}
