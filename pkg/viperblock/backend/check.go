package backend

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"
)

// CheckPrefix is the key prefix under which Check writes its test objects:
// CheckPrefix + "/" + a random run id + "/" + object. Check removes them
// when it is done; a check interrupted by a crash may leave a few small
// objects there, which are safe to delete.
const CheckPrefix = "viperblock-store-check"

// ErrIncompatible is wrapped by Check's error when the store answered but
// does not behave as the engine needs (as opposed to a store that could
// not be reached or refused the credentials). Fencing an old owner depends
// on conditional writes: a store that ignores If-Match or If-None-Match
// lets two writers replace each other's manifest, so no volume may be
// served from it.
var ErrIncompatible = errors.New("viperblock/backend: store is not compatible")

// The checks Check runs, in order. Their names appear in the report and
// in the error that names the first failing one.
const (
	CheckCreateIfAbsent  = "create-if-absent"   // PutIf(key, "") on a missing key succeeds
	CheckIfNoneMatch     = "if-none-match"      // PutIf(key, "") on an existing key fails with a precondition error
	CheckIfMatchRight    = "if-match-current"   // PutIf(key, current version) succeeds and changes the version
	CheckIfMatchStale    = "if-match-stale"     // PutIf(key, an earlier version) fails with a precondition error
	CheckIfMatchMissing  = "if-match-missing"   // PutIf(missing key, some version) fails
	CheckReadBack        = "read-back"          // Get returns the last successful write and its version
	CheckRangedGet       = "ranged-get"         // GetRange returns the requested bytes; past the end is ErrRange
	CheckList            = "list"               // List returns exactly the keys under a prefix, sorted
	CheckDeleteAndVerify = "delete"             // Delete removes objects; Get then reports ErrNotFound
	checkSetup           = "put"                // an unconditional Put works at all
	checkCleanup         = "cleanup"            // the test objects are gone
	checkDeleteMissing   = "delete-missing-key" // Delete of a missing key is not an error
)

// CheckResult is the outcome of one check.
type CheckResult struct {
	Name   string
	OK     bool
	Detail string        // what was seen, for a failure; what was verified, for a success
	Took   time.Duration // time spent on it
}

// CheckReport is what Check found. The JSON form is what `vblock store
// check --json` prints.
type CheckReport struct {
	Prefix  string // the run's key prefix (CheckPrefix/<id>)
	Results []CheckResult
}

// OK reports whether every check passed.
func (r CheckReport) OK() bool {
	for _, c := range r.Results {
		if !c.OK {
			return false
		}
	}
	return len(r.Results) > 0
}

// Failed returns the first failed check, or nil.
func (r CheckReport) Failed() *CheckResult {
	for i := range r.Results {
		if !r.Results[i].OK {
			return &r.Results[i]
		}
	}
	return nil
}

// Check verifies against the live store s what the engine relies on:
// conditional writes are honoured (create-only with If-None-Match, compare
// and swap with If-Match: a stale or made-up version is refused, the
// current one accepted), reads return what was written, ranged reads
// return the right bytes, List returns the keys under a prefix, and Delete
// deletes. It writes a few small objects under CheckPrefix/<random id>/
// and deletes them before it returns, whatever the outcome.
//
// The error is nil when every check passed. When a check fails, the error
// names it and wraps ErrIncompatible if the store answered but behaved
// wrongly, or the store's own error (not ErrIncompatible) if it could not
// be asked (unreachable, access denied). The report lists every check run
// up to and including the failing one, and the cleanup.
func Check(ctx context.Context, s Store) (CheckReport, error) {
	var id [8]byte
	if _, err := rand.Read(id[:]); err != nil {
		return CheckReport{}, err
	}
	prefix := CheckPrefix + "/" + hex.EncodeToString(id[:])
	c := &checker{s: s, rep: CheckReport{Prefix: prefix}, prefix: prefix + "/"}
	err := c.run(ctx)
	// Clean up with a context of its own, so a cancelled check still
	// removes what it wrote when the store answers.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	if cerr := c.cleanup(cctx); err == nil {
		err = cerr
	}
	return c.rep, err
}

type checker struct {
	s       Store
	rep     CheckReport
	prefix  string   // the run's prefix, ending in '/'
	written []string // keys that may exist
}

// step runs one check; fn returns a detail for the report and an error.
// An error wrapping ErrIncompatible is a failed check; any other error is
// a store that could not be asked, reported under the check's name too.
func (c *checker) step(name string, fn func() (string, error)) error {
	start := time.Now()
	detail, err := fn()
	r := CheckResult{Name: name, OK: err == nil, Detail: detail, Took: time.Since(start)}
	if err != nil {
		r.Detail = err.Error()
	}
	c.rep.Results = append(c.rep.Results, r)
	if err != nil {
		return fmt.Errorf("store check %s failed: %w", name, err)
	}
	return nil
}

func incompatible(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrIncompatible}, a...)...)
}

func (c *checker) key(name string) string {
	k := c.prefix + name
	c.written = append(c.written, k)
	return k
}

// pattern returns n bytes that differ from any other (tag, n) pair.
func pattern(tag byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = tag ^ byte(i*7+i>>8)
	}
	return b
}

func (c *checker) run(ctx context.Context) error {
	plain, cas := c.key("plain"), c.key("cas")
	a, b, cdata, d := pattern('a', 1000), pattern('b', 1100), pattern('c', 9000), pattern('d', 1200)
	var v1, v2 Version

	steps := []struct {
		name string
		fn   func() (string, error)
	}{
		{checkSetup, func() (string, error) {
			if err := c.s.Put(ctx, plain, pattern('p', 64)); err != nil {
				return "", err
			}
			return "an unconditional PUT is stored", nil
		}},
		{CheckCreateIfAbsent, func() (string, error) {
			v, err := c.s.PutIf(ctx, cas, a, "")
			if errors.Is(err, ErrPrecondition) {
				return "", incompatible("a create-only write (If-None-Match: *) of a new key was refused: %v", err)
			}
			if err != nil {
				return "", err
			}
			if v == "" {
				return "", incompatible("a create-only write returned no version (ETag)")
			}
			v1 = v
			return "a create-only write of a new key succeeds", nil
		}},
		{CheckIfNoneMatch, func() (string, error) {
			_, err := c.s.PutIf(ctx, cas, b, "")
			if err == nil {
				return "", incompatible("a create-only write (If-None-Match: *) replaced an existing object: the store ignores If-None-Match")
			}
			if !errors.Is(err, ErrPrecondition) {
				return "", err
			}
			return "a create-only write of an existing key is refused (precondition failed)", nil
		}},
		{CheckIfMatchStale, func() (string, error) {
			// A version the object never had: the current one with its
			// content changed, kept in the same shape (an S3 ETag is a
			// quoted hex MD5).
			_, err := c.s.PutIf(ctx, cas, b, madeUpVersion(v1))
			if err == nil {
				return "", incompatible("a write with If-Match of a version the object never had replaced it: the store ignores If-Match")
			}
			if !errors.Is(err, ErrPrecondition) {
				return "", err
			}
			return "a write with If-Match of a wrong version is refused (precondition failed)", nil
		}},
		{CheckIfMatchRight, func() (string, error) {
			v, err := c.s.PutIf(ctx, cas, cdata, v1)
			if errors.Is(err, ErrPrecondition) {
				return "", incompatible("a write with If-Match of the current version %s was refused: %v", v1, err)
			}
			if err != nil {
				return "", err
			}
			if v == "" || v == v1 {
				return "", incompatible("a write with new content kept the version %q: versions do not identify contents", v)
			}
			v2 = v
			return "a write with If-Match of the current version succeeds with a new version", nil
		}},
		{CheckIfMatchStale + "-after-update", func() (string, error) {
			// The fencing case: an old owner still holds the version it
			// read before the new owner's write.
			_, err := c.s.PutIf(ctx, cas, d, v1)
			if err == nil {
				return "", incompatible("a write with If-Match of a superseded version replaced the object: the store ignores If-Match")
			}
			if !errors.Is(err, ErrPrecondition) {
				return "", err
			}
			return "a write with If-Match of a superseded version is refused (precondition failed)", nil
		}},
		{CheckIfMatchMissing, func() (string, error) {
			_, err := c.s.PutIf(ctx, c.key("absent"), d, v2)
			if err == nil {
				return "", incompatible("a write with If-Match to a missing key created it")
			}
			if !errors.Is(err, ErrPrecondition) && !errors.Is(err, ErrNotFound) {
				return "", err
			}
			return "a write with If-Match to a missing key is refused", nil
		}},
		{CheckReadBack, func() (string, error) {
			got, v, err := c.s.Get(ctx, cas)
			if err != nil {
				return "", err
			}
			if !bytes.Equal(got, cdata) {
				return "", incompatible("the object holds %d bytes other than the last accepted write's %d (a refused write was applied?)", len(got), len(cdata))
			}
			if v != v2 {
				return "", incompatible("GET reports version %s, the write returned %s", v, v2)
			}
			return "GET returns the last accepted write and its version", nil
		}},
		{CheckRangedGet, func() (string, error) {
			for _, r := range [][2]int64{{0, 1}, {4093, 4099}, {int64(len(cdata)) - 5, 5}} {
				got, err := c.s.GetRange(ctx, cas, r[0], r[1])
				if err != nil {
					return "", err
				}
				if !bytes.Equal(got, cdata[r[0]:r[0]+r[1]]) {
					return "", incompatible("GET of bytes %d-%d returned %d other bytes", r[0], r[0]+r[1]-1, len(got))
				}
			}
			_, err := c.s.GetRange(ctx, cas, int64(len(cdata))-2, 4)
			if !errors.Is(err, ErrRange) {
				return "", incompatible("a ranged GET past the end of the object returned %v, want a range error", err)
			}
			return "ranged GETs return the requested bytes; past the end is a range error", nil
		}},
		{CheckList, func() (string, error) {
			keys, err := c.s.List(ctx, c.prefix)
			if err != nil {
				return "", err
			}
			want := []string{cas, plain}
			if strings.Join(keys, "\n") != strings.Join(want, "\n") {
				return "", incompatible("LIST of %s returned %q, want %q", c.prefix, keys, want)
			}
			return "LIST returns the keys under a prefix, sorted", nil
		}},
		{checkDeleteMissing, func() (string, error) {
			if err := c.s.Delete(ctx, c.prefix+"absent"); err != nil {
				return "", err
			}
			return "DELETE of a missing key succeeds", nil
		}},
		{CheckDeleteAndVerify, func() (string, error) {
			if err := c.s.Delete(ctx, plain); err != nil {
				return "", err
			}
			if _, _, err := c.s.Get(ctx, plain); !errors.Is(err, ErrNotFound) {
				return "", incompatible("GET after DELETE returned %v, want not found", err)
			}
			return "DELETE removes an object", nil
		}},
	}
	for _, st := range steps {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := c.step(st.name, st.fn); err != nil {
			return err
		}
	}
	return nil
}

// madeUpVersion returns a version that differs from v but has its shape:
// each hex digit or letter replaced by another, so a server that parses
// versions finds a well-formed one that matches nothing.
func madeUpVersion(v Version) Version {
	b := []byte(v)
	changed := false
	for i, ch := range b {
		switch {
		case ch >= '0' && ch <= '8', ch >= 'a' && ch <= 'e', ch >= 'A' && ch <= 'E':
			b[i] = ch + 1
			changed = true
		case ch == '9':
			b[i] = '0'
			changed = true
		case ch == 'f' || ch == 'F':
			b[i] = ch - 5
			changed = true
		}
	}
	if !changed {
		b = append(b, 'x')
	}
	return Version(b)
}

// cleanup deletes every test object and checks that none is left.
func (c *checker) cleanup(ctx context.Context) error {
	return c.step(checkCleanup, func() (string, error) {
		var errs []error
		for _, k := range c.written {
			if err := c.s.Delete(ctx, k); err != nil {
				errs = append(errs, err)
			}
		}
		if err := errors.Join(errs...); err != nil {
			return "", err
		}
		left, err := c.s.List(ctx, c.prefix)
		if err != nil {
			return "", err
		}
		if len(left) > 0 {
			return "", incompatible("objects left under %s after deleting them: %q", c.prefix, left)
		}
		return "the test objects under " + strings.TrimSuffix(c.prefix, "/") + " are deleted", nil
	})
}
