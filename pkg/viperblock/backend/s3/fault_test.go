package s3_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/internal/testutil/faultproxy"
	"github.com/viperblock/viperblock-csi/internal/testutil/s3server"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	s3store "github.com/viperblock/viperblock-csi/pkg/viperblock/backend/s3"
)

// objData returns n pseudo-random bytes for seed.
func objData(seed uint64, n int) []byte {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	b := make([]byte, n)
	_, _ = rand.NewChaCha8(key).Read(b)
	return b
}

// TestFaultInjection writes 200 objects of 1 MiB through a proxy that fails
// 10% of all requests in every way it knows, reads each back intact, and
// runs a chain of conditional updates through it.
func TestFaultInjection(t *testing.T) {
	t.Parallel()
	srv := s3server.Start(t)
	seed := uint64(time.Now().UnixNano())
	if env := os.Getenv("VB_FAULT_SEED"); env != "" {
		v, err := strconv.ParseUint(env, 10, 64)
		if err != nil {
			t.Fatalf("VB_FAULT_SEED: %v", err)
		}
		seed = v
	}
	t.Logf("fault seed %d (rerun with VB_FAULT_SEED=%d)", seed, seed)
	p := faultproxy.Start(t, srv.Endpoint, faultproxy.Options{Rate: 0.10, Seed: seed, Delay: 1500 * time.Millisecond})
	s := open(t, s3server.StoreURL(srv.Bucket, "faults", p.URL, srv.CredentialsFile,
		"max_attempts=10", "timeout=1s", "max_backoff=250ms"))
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	const objects, size, workers = 200, 1 << 20, 8
	key := func(i int) string { return fmt.Sprintf("obj/%04d", i) }
	parallel := func(fn func(i int) error) {
		t.Helper()
		var wg sync.WaitGroup
		var mu sync.Mutex
		var errs []error
		next := make(chan int)
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range next {
					if err := fn(i); err != nil {
						mu.Lock()
						errs = append(errs, err)
						mu.Unlock()
					}
				}
			}()
		}
		for i := 0; i < objects; i++ {
			next <- i
		}
		close(next)
		wg.Wait()
		for _, err := range errs[:min(len(errs), 10)] {
			t.Error(err)
		}
		if len(errs) > 0 {
			t.Fatalf("%d of %d operations failed", len(errs), objects)
		}
	}

	start := time.Now()
	parallel(func(i int) error {
		if err := s.Put(ctx, key(i), objData(uint64(i), size)); err != nil {
			return fmt.Errorf("Put %s: %w", key(i), err)
		}
		return nil
	})
	t.Logf("wrote %d x %d bytes in %v", objects, size, time.Since(start))
	start = time.Now()
	parallel(func(i int) error {
		want := objData(uint64(i), size)
		got, v, err := s.Get(ctx, key(i))
		if err != nil {
			return fmt.Errorf("Get %s: %w", key(i), err)
		}
		if !bytes.Equal(got, want) || v == "" {
			return fmt.Errorf("Get %s: %d bytes, version %q: content differs from what was written", key(i), len(got), v)
		}
		off := int64(i * 4099 % (size - 8192))
		r, err := s.GetRange(ctx, key(i), off, 8192)
		if err != nil {
			return fmt.Errorf("GetRange %s: %w", key(i), err)
		}
		if !bytes.Equal(r, want[off:off+8192]) {
			return fmt.Errorf("GetRange %s [%d,+8192): wrong bytes", key(i), off)
		}
		return nil
	})
	t.Logf("read back in %v", time.Since(start))
	keys, err := s.List(ctx, "obj/")
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if len(keys) != objects || keys[0] != key(0) || keys[objects-1] != key(objects-1) {
		t.Fatalf("List returned %d keys (%q...), want %d", len(keys), keys[:min(3, len(keys))], objects)
	}

	// A single writer's chain of compare-and-swaps must never see a false
	// ErrPrecondition, even when responses are lost after the server
	// applied the write.
	v, err := s.PutIf(ctx, "manifest", []byte("gen 0"), "")
	if err != nil {
		t.Fatalf("PutIf create: %v", err)
	}
	for gen := 1; gen <= 60; gen++ {
		v, err = s.PutIf(ctx, "manifest", []byte(fmt.Sprintf("gen %d %s", gen, strings.Repeat("m", gen*100))), v)
		if err != nil {
			t.Fatalf("PutIf gen %d: %v (stats %+v)", gen, err, s.Stats())
		}
	}
	got, gv, err := s.Get(ctx, "manifest")
	if err != nil || !strings.HasPrefix(string(got), "gen 60 ") || gv != v {
		t.Fatalf("manifest after the chain: %.10q version %q (PutIf said %q), %v", got, gv, v, err)
	}

	st := s.Stats()
	t.Logf("store stats %+v; proxy faults %v", st, p.Counts())
	if st.Retries == 0 || p.Faults() == 0 {
		t.Fatalf("no retries (%d) or no faults (%d): the test did not test anything", st.Retries, p.Faults())
	}
}

func onlyPuts(r *http.Request) bool { return r.Method == http.MethodPut }
func onlyGets(r *http.Request) bool { return r.Method == http.MethodGet }

func faultStore(t *testing.T, srv *s3server.Server, p *faultproxy.Proxy, onRetry func(string, int, error)) *s3store.Store {
	t.Helper()
	return faultStoreTimeout(t, srv, p, onRetry, 5*time.Second)
}

// faultStoreTimeout is faultStore with another attempt timeout.
func faultStoreTimeout(t *testing.T, srv *s3server.Server, p *faultproxy.Proxy, onRetry func(string, int, error), attempt time.Duration) *s3store.Store {
	t.Helper()
	s, err := s3store.New(context.Background(), s3store.Config{
		Bucket:          srv.Bucket,
		Prefix:          "amb",
		Endpoint:        p.URL,
		Region:          s3server.Region,
		PathStyle:       true,
		CredentialsFile: srv.CredentialsFile,
		MaxAttempts:     5,
		AttemptTimeout:  attempt,
		MaxBackoff:      100 * time.Millisecond,
		OnRetry:         onRetry,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestPutIfAmbiguousRetry: a PutIf whose first attempt was applied but whose
// answer was lost succeeds on the retry that then fails its precondition.
func TestPutIfAmbiguousRetry(t *testing.T) {
	t.Parallel()
	srv := s3server.Start(t)
	// The delayed answer is held for a minute: only the 5 s attempt timeout
	// can make the PutIf return well before that, however loaded the
	// machine is, and no attempt the test does not fault times out.
	p := faultproxy.Start(t, srv.Endpoint, faultproxy.Options{Match: onlyPuts, Delay: time.Minute})
	var mu sync.Mutex
	var retried []string
	s := faultStoreTimeout(t, srv, p, func(op string, attempt int, err error) {
		mu.Lock()
		retried = append(retried, fmt.Sprintf("%s#%d after %v", op, attempt, err))
		mu.Unlock()
	}, 5*time.Second)
	ctx := context.Background()
	check := func(what string, v backend.Version, err error, want string, ambiguous uint64) backend.Version {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		got, gv, err := s.Get(ctx, "manifest")
		if err != nil || string(got) != want || gv != v {
			t.Fatalf("%s: store holds %q version %q, PutIf returned %q (%v)", what, got, gv, v, err)
		}
		if a := s.Stats().AmbiguousPutIfs; a != ambiguous {
			t.Fatalf("%s: AmbiguousPutIfs = %d, want %d", what, a, ambiguous)
		}
		return v
	}

	p.Force(faultproxy.ResetAfter, 1)
	v, err := s.PutIf(ctx, "manifest", []byte("one"), "")
	v = check("create, reset after apply", v, err, "one", 1)

	p.Force(faultproxy.ResetAfter, 1)
	v, err = s.PutIf(ctx, "manifest", []byte("two"), v)
	v = check("update, reset after apply", v, err, "two", 2)

	p.Force(faultproxy.Delay, 1)
	start := time.Now()
	v, err = s.PutIf(ctx, "manifest", []byte("three"), v)
	v = check("update, answer delayed past the attempt timeout", v, err, "three", 3)
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("PutIf took %v: the attempt timeout did not cut the delayed attempt", d)
	}

	p.Force(faultproxy.ResetBefore, 1)
	v, err = s.PutIf(ctx, "manifest", []byte("four"), v)
	v = check("update, reset before the server saw it", v, err, "four", 3)

	p.Force(faultproxy.SlowDown503, 2)
	v, err = s.PutIf(ctx, "manifest", []byte("five"), v)
	v = check("update after two 503 SlowDown", v, err, "five", 3)

	// A genuine conflict stays a conflict after a retry: the content differs.
	stale := v
	if err := s.Put(ctx, "manifest", []byte("someone else")); err != nil {
		t.Fatal(err)
	}
	p.Force(faultproxy.Error500, 1)
	if _, err := s.PutIf(ctx, "manifest", []byte("six"), stale); !errors.Is(err, backend.ErrPrecondition) {
		t.Fatalf("stale PutIf after a 500: %v; want ErrPrecondition", err)
	}
	p.Force(faultproxy.Error500, 1)
	if _, err := s.PutIf(ctx, "manifest", []byte("seven"), ""); !errors.Is(err, backend.ErrPrecondition) {
		t.Fatalf("create of an existing object after a 500: %v; want ErrPrecondition", err)
	}
	if got, _, _ := s.Get(ctx, "manifest"); string(got) != "someone else" {
		t.Fatalf("failed PutIfs changed the object to %q", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(retried) < 7 {
		t.Errorf("OnRetry saw %d retries, want at least 7: %q", len(retried), retried)
	}
}

// TestPutIfAmbiguousUnreadable: a PutIf whose first attempt was applied but
// whose answer was lost, whose retry failed its precondition, and whose
// read-back failed too has an unknown outcome: it must not report
// ErrPrecondition (a lost compare-and-swap), since it may have applied.
func TestPutIfAmbiguousUnreadable(t *testing.T) {
	t.Parallel()
	srv := s3server.Start(t)
	p := faultproxy.Start(t, srv.Endpoint, faultproxy.Options{})
	s := faultStoreTimeout(t, srv, p, nil, 5*time.Second) // no attempt the test does not fault may time out
	ctx := context.Background()
	v, err := s.PutIf(ctx, "manifest", []byte("one"), "")
	if err != nil {
		t.Fatal(err)
	}
	// The first attempt applies and its answer is reset, the retry's 412 is
	// delivered, and every attempt of the read-back (HEAD: 5 attempts) gets
	// a 500. (A 500, not a reset: Go's HTTP client may repeat a reset HEAD
	// by itself, consuming faults unpredictably.)
	p.Force(faultproxy.ResetAfter, 1)
	p.Force(faultproxy.None, 1)
	p.Force(faultproxy.Error500, 5)
	_, err = s.PutIf(ctx, "manifest", []byte("two"), v)
	if err == nil || errors.Is(err, backend.ErrPrecondition) || !strings.Contains(err.Error(), "outcome unknown") {
		t.Fatalf("PutIf with its answer lost and its read-back failed: %v; want an unknown outcome, not ErrPrecondition", err)
	}
	if got, _, err := s.Get(ctx, "manifest"); err != nil || string(got) != "two" {
		t.Fatalf("store holds %q (%v); want the applied write", got, err)
	}
	if c := p.Counts(); c[faultproxy.Error500] != 5 || c[faultproxy.ResetAfter] != 1 {
		t.Fatalf("faults injected: %v", c)
	}
	if a := s.Stats().AmbiguousPutIfs; a != 0 {
		t.Fatalf("AmbiguousPutIfs = %d, want 0 (nothing was resolved)", a)
	}
}

// TestGetBodyFaults: responses cut short or stalled mid-body are re-read.
func TestGetBodyFaults(t *testing.T) {
	t.Parallel()
	srv := s3server.Start(t)
	// A 2 MiB answer can take more than a second on a loaded machine, so
	// attempts get 5 s; a delayed answer is held a minute, so only the
	// attempt timeout ends it.
	p := faultproxy.Start(t, srv.Endpoint, faultproxy.Options{Match: onlyGets, Delay: time.Minute})
	s := faultStoreTimeout(t, srv, p, nil, 5*time.Second)
	ctx := context.Background()
	data := objData(7, 2<<20)
	if err := s.Put(ctx, "big", data); err != nil {
		t.Fatal(err)
	}
	for _, k := range []faultproxy.Kind{faultproxy.Truncate, faultproxy.Delay, faultproxy.ResetBefore, faultproxy.Error500} {
		before := s.Stats().Retries
		p.Force(k, 2)
		got, _, err := s.Get(ctx, "big")
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("Get after 2 %v faults: %d bytes, %v", k, len(got), err)
		}
		p.Force(k, 2)
		r, err := s.GetRange(ctx, "big", 1<<20, 1<<20)
		if err != nil || !bytes.Equal(r, data[1<<20:2<<20]) {
			t.Fatalf("GetRange after 2 %v faults: %d bytes, %v", k, len(r), err)
		}
		// Go's HTTP transport itself retries a GET once on a reused
		// connection that resets before answering, so not every reset
		// reaches the SDK's retryer.
		want := uint64(4)
		if k == faultproxy.ResetBefore {
			want = 1
		}
		if d := s.Stats().Retries - before; d < want {
			t.Errorf("%v: %d retries counted, want %d", k, d, want)
		}
	}
	// More faults than attempts: the error comes back, it is not ErrNotFound.
	p.Force(faultproxy.Error500, 5)
	if _, _, err := s.Get(ctx, "big"); err == nil || errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("Get after 5 faults with max_attempts=5: %v; want a server error", err)
	}
}
