package viperblock_test

// Manifest commits whose outcome the engine cannot tell from the store's
// answer: applied with the answer lost, applied late, reported as a
// conflict although applied, not applied at all. None of them may fence a
// volume nobody else owns; a real takeover still must.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/internal/testutil/faultproxy"
	"github.com/viperblock/viperblock-csi/internal/testutil/s3server"
	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/manifest"
)

// putIfFault is what lossyStore does to one PutIf of a manifest.
type putIfFault int

const (
	// applyLoseAnswer applies the PutIf, then fails it: the answer was lost.
	applyLoseAnswer putIfFault = iota + 1
	// applyReportConflict applies the PutIf, then fails it with
	// ErrPrecondition (as an S3 retry would, had the first attempt applied
	// and another writer replaced it).
	applyReportConflict
	// applyCancel applies the PutIf, then cancels the caller's context (its
	// deadline passes) and fails with the context's error.
	applyCancel
	// dropRequest fails the PutIf without applying it.
	dropRequest
	// conflictNotApplied fails the PutIf with ErrPrecondition without
	// applying it or anything having changed.
	conflictNotApplied
	// holdRequest fails the PutIf without applying it now: release applies
	// it later, as a request held up in the network would be.
	holdRequest
)

var errAnswerLost = errors.New("injected: connection reset; the request may have been applied")

// lossyStore wraps a store and injects failures into the PutIfs and Gets of
// volume manifests.
type lossyStore struct {
	backend.Store

	mu       sync.Mutex // guards the fields below
	faults   []putIfFault
	getFails int                // the next manifest Gets that fail
	held     []func() error     // PutIfs held back by holdRequest
	cancel   context.CancelFunc // what applyCancel cancels
	syncs    int                // Syncs of a manifest (batching stores)
}

// newLossy wraps s; a store that batches durability stays one.
func newLossy(s backend.Store) (backend.Store, *lossyStore) {
	ls := &lossyStore{Store: s}
	if b, ok := s.(backend.BatchPutter); ok {
		return &lossyBatchStore{ls, b}, ls
	}
	return ls, ls
}

func isManifestKey(k string) bool { return strings.HasSuffix(k, "/manifest") }

// arm queues faults for the next manifest PutIfs.
func (s *lossyStore) arm(f ...putIfFault) {
	s.mu.Lock()
	s.faults = append(s.faults, f...)
	s.mu.Unlock()
}

// armCancel queues applyCancel, cancelling with cancel.
func (s *lossyStore) armCancel(cancel context.CancelFunc) {
	s.mu.Lock()
	s.cancel = cancel
	s.faults = append(s.faults, applyCancel)
	s.mu.Unlock()
}

func (s *lossyStore) failGets(n int) {
	s.mu.Lock()
	s.getFails += n
	s.mu.Unlock()
}

// release applies the PutIfs held back so far.
func (s *lossyStore) release() error {
	s.mu.Lock()
	held := s.held
	s.held = nil
	s.mu.Unlock()
	for _, f := range held {
		if err := f(); err != nil {
			return err
		}
	}
	return nil
}

func (s *lossyStore) manifestSyncs() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.syncs
}

func (s *lossyStore) Get(ctx context.Context, k string) ([]byte, backend.Version, error) {
	if isManifestKey(k) {
		s.mu.Lock()
		fail := s.getFails > 0
		if fail {
			s.getFails--
		}
		s.mu.Unlock()
		if fail {
			return nil, "", errors.New("injected: read timed out")
		}
	}
	return s.Store.Get(ctx, k)
}

func (s *lossyStore) PutIf(ctx context.Context, k string, d []byte, v backend.Version) (backend.Version, error) {
	var f putIfFault
	if isManifestKey(k) {
		s.mu.Lock()
		if len(s.faults) > 0 {
			f, s.faults = s.faults[0], s.faults[1:]
		}
		s.mu.Unlock()
	}
	switch f {
	case applyLoseAnswer, applyReportConflict, applyCancel:
		if _, err := s.Store.PutIf(ctx, k, d, v); err != nil {
			return "", fmt.Errorf("lossyStore: the PutIf to lose failed: %w", err)
		}
		switch f {
		case applyReportConflict:
			return "", fmt.Errorf("%w: injected: %s changed since the first attempt", backend.ErrPrecondition, k)
		case applyCancel:
			s.mu.Lock()
			cancel := s.cancel
			s.mu.Unlock()
			cancel()
			return "", fmt.Errorf("injected: PutObject %s: %w", k, ctx.Err())
		}
		return "", errAnswerLost
	case dropRequest:
		return "", errAnswerLost
	case conflictNotApplied:
		return "", fmt.Errorf("%w: injected: %s", backend.ErrPrecondition, k)
	case holdRequest:
		d = bytes.Clone(d)
		s.mu.Lock()
		s.held = append(s.held, func() error {
			_, err := s.Store.PutIf(context.Background(), k, d, v)
			return err
		})
		s.mu.Unlock()
		return "", errAnswerLost
	}
	return s.Store.PutIf(ctx, k, d, v)
}

// lossyBatchStore is a lossyStore over a store that batches durability.
type lossyBatchStore struct {
	*lossyStore
	b backend.BatchPutter
}

func (s *lossyBatchStore) PutUnsynced(ctx context.Context, k string, d []byte) error {
	return s.b.PutUnsynced(ctx, k, d)
}

func (s *lossyBatchStore) Sync(ctx context.Context, keys []string) error {
	for _, k := range keys {
		if isManifestKey(k) {
			s.mu.Lock()
			s.syncs++
			s.mu.Unlock()
		}
	}
	return s.b.Sync(ctx, keys)
}

// volImage is what a volume of imgBlocks blocks must hold.
type volImage struct {
	vol    string // the volume's name
	blocks [imgBlocks][]byte
	n      int
}

const imgBlocks = 64

// write writes a new version of block b (tagged w) and records it.
func (im *volImage) write(t *testing.T, v *vb.Volume, w byte, b uint64) {
	t.Helper()
	im.n++
	d := blockData(w, b, im.n)
	if _, err := v.WriteAt(d, int64(b)*vb.BlockSize); err != nil {
		t.Fatalf("write block %d: %v", b, err)
	}
	im.blocks[b] = d
}

// writeFlush writes n blocks from block first and flushes them.
func (im *volImage) writeFlush(t *testing.T, v *vb.Volume, w byte, first, n uint64) {
	t.Helper()
	for b := first; b < first+n; b++ {
		im.write(t, v, w, b%imgBlocks)
	}
	if err := v.Flush(); err != nil {
		t.Fatalf("flush: %v", err)
	}
}

// check compares the volume with the image.
func (im *volImage) check(t *testing.T, what string, v *vb.Volume) {
	t.Helper()
	got := readAll(t, v)
	zero := make([]byte, vb.BlockSize)
	for b := range im.blocks {
		want := im.blocks[b]
		if want == nil {
			want = zero
		}
		if g := got[b*vb.BlockSize : (b+1)*vb.BlockSize]; !bytes.Equal(g, want) {
			t.Fatalf("%s: block %d holds %q v%d, want %q v%d", what, b, g[0], g[9], want[0], want[9])
		}
	}
}

// checkElsewhere opens the volume read-only through a new store handle (as
// another node would: the backend alone) and checks it.
func (im *volImage) checkElsewhere(t *testing.T, what string, s backend.Store) {
	t.Helper()
	r, err := vb.Open(context.Background(), s, im.vol, vb.Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("%s: open read-only: %v", what, err)
	}
	defer r.Close()
	im.check(t, what, r)
}

// quietOpts: drains only when the test asks.
func quietOpts(t *testing.T) vb.Options {
	o := opts(t)
	o.Logger = quiet()
	o.DrainInterval = time.Hour
	o.DrainBytes = 1 << 30
	return o
}

// TestCommitOutcomeUnknown: a drain whose manifest commit fails without the
// engine knowing whether it applied does not fence the volume. Whatever the
// store did, later writes drain, Close succeeds, and the volume opened
// elsewhere holds every write.
func TestCommitOutcomeUnknown(t *testing.T) { forEachStore(t, testCommitOutcomeUnknown) }

func testCommitOutcomeUnknown(t *testing.T, newStore func(t *testing.T) backend.Store) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		// arm sets up the fault; cancel is the drain's context's.
		arm func(ls *lossyStore, cancel context.CancelFunc)
		// firstOK: the drain that meets the fault succeeds (it resolves the
		// outcome itself); otherwise it fails and a later drain resolves it.
		firstOK bool
		// between runs after the first drain, before the next writes.
		between func(t *testing.T, ls *lossyStore)
		// resolved: the outcome is resolved as applied (ResolvedCommits).
		resolved bool
	}{
		{name: "applied-answer-lost", firstOK: true, resolved: true,
			arm: func(ls *lossyStore, _ context.CancelFunc) { ls.arm(applyLoseAnswer) }},
		{name: "applied-reported-as-conflict", firstOK: true, resolved: true,
			arm: func(ls *lossyStore, _ context.CancelFunc) { ls.arm(applyReportConflict) }},
		{name: "applied-answer-lost-read-back-fails", resolved: true,
			arm: func(ls *lossyStore, _ context.CancelFunc) { ls.arm(applyLoseAnswer); ls.failGets(1) }},
		{name: "applied-at-deadline", resolved: true,
			arm: func(ls *lossyStore, cancel context.CancelFunc) { ls.armCancel(cancel) }},
		{name: "not-applied",
			arm: func(ls *lossyStore, _ context.CancelFunc) { ls.arm(dropRequest) }},
		{name: "not-applied-reported-as-conflict", firstOK: true,
			arm: func(ls *lossyStore, _ context.CancelFunc) { ls.arm(conflictNotApplied) }},
		{name: "not-applied-twice", // the next drain's first commit attempt is lost too
			arm:     func(ls *lossyStore, _ context.CancelFunc) { ls.arm(dropRequest) },
			between: func(t *testing.T, ls *lossyStore) { ls.arm(dropRequest) }},
		{name: "applied-late", resolved: true,
			arm: func(ls *lossyStore, _ context.CancelFunc) { ls.arm(holdRequest) },
			between: func(t *testing.T, ls *lossyStore) {
				if err := ls.release(); err != nil {
					t.Fatalf("apply the held commit: %v", err)
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, ls := newLossy(newStore(t))
			im := volImage{vol: tc.name}
			v := mustCreate(t, st, im.vol, imgBlocks*vb.BlockSize, quietOpts(t))
			defer v.Close()
			im.writeFlush(t, v, 'a', 0, 8)
			if err := v.Drain(ctx); err != nil {
				t.Fatal(err)
			}
			im.writeFlush(t, v, 'b', 4, 8)
			im.write(t, v, 'c', 20) // not flushed: drained all the same
			dctx, cancel := context.WithCancel(ctx)
			defer cancel()
			tc.arm(ls, cancel)
			err := v.Drain(dctx)
			t.Logf("drain meeting the fault: %v", err)
			switch {
			case errors.Is(err, vb.ErrFenced) || v.Stats().Fenced:
				t.Fatalf("the fault fenced the volume: %v (stats %+v)", err, v.Stats())
			case tc.firstOK && err != nil:
				t.Fatalf("drain: %v; want the outcome resolved by reading the manifest back", err)
			case !tc.firstOK && err == nil:
				t.Fatal("drain succeeded; want the unresolved commit reported")
			}
			im.check(t, "after the fault", v)
			if tc.between != nil {
				tc.between(t, ls)
			}
			// The next drain commits (retrying once more if the fault
			// repeats), with new writes on top.
			im.writeFlush(t, v, 'd', 10, 16)
			err = v.Drain(ctx)
			if err != nil && !errors.Is(err, vb.ErrFenced) {
				t.Logf("second drain: %v; retrying", err)
				err = v.Drain(ctx)
			}
			if err != nil {
				t.Fatalf("drain after the fault: %v (stats %+v)", err, v.Stats())
			}
			s := v.Stats()
			if s.Fenced || s.PendingBytes != 0 {
				t.Fatalf("after the drains: %+v", s)
			}
			if got := s.ResolvedCommits > 0; got != tc.resolved {
				t.Fatalf("ResolvedCommits = %d; want a resolved commit: %v", s.ResolvedCommits, tc.resolved)
			}
			if _, batching := st.(backend.BatchPutter); batching && tc.resolved && ls.manifestSyncs() == 0 {
				t.Fatal("a manifest adopted after a failure was not synced on a batching store")
			}
			im.check(t, "after the next drain", v)
			im.checkElsewhere(t, "the backend after the next drain", newStore(t))
			// And the volume lives on: more writes, Close (its final
			// commit's answer lost too), and a new node sees everything.
			im.writeFlush(t, v, 'e', 30, 8)
			ls.arm(applyLoseAnswer)
			if err := v.Close(); err != nil {
				t.Fatalf("close (final commit's answer lost): %v", err)
			}
			v2, err := vb.Open(ctx, newStore(t), im.vol, quietOpts(t))
			if err != nil {
				t.Fatalf("open on another node: %v", err)
			}
			defer v2.Close()
			im.check(t, "another node", v2)
			if inf, err := vb.Inspect(ctx, newStore(t), im.vol); err != nil || inf.Epoch != 2 {
				t.Fatalf("Inspect: %+v, %v; want epoch 2", inf, err)
			}
		})
	}
}

// TestCommitOutcomeUnknownCrash: after a commit whose answer was lost and
// could not be read back, the process dies; reopening on the same node
// replays the WAL over whatever the backend holds, and nothing flushed is
// lost.
func TestCommitOutcomeUnknownCrash(t *testing.T) { forEachStore(t, testCommitOutcomeUnknownCrash) }

func testCommitOutcomeUnknownCrash(t *testing.T, newStore func(t *testing.T) backend.Store) {
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		fault putIfFault
	}{{"applied", applyLoseAnswer}, {"not-applied", dropRequest}} {
		t.Run(tc.name, func(t *testing.T) {
			st, ls := newLossy(newStore(t))
			o := quietOpts(t)
			im := volImage{vol: tc.name}
			v := mustCreate(t, st, im.vol, imgBlocks*vb.BlockSize, o)
			im.writeFlush(t, v, 'a', 0, 12)
			ls.arm(tc.fault)
			ls.failGets(1)
			if err := v.Drain(ctx); err == nil || errors.Is(err, vb.ErrFenced) {
				t.Fatalf("drain: %v; want an unresolved commit", err)
			}
			im.writeFlush(t, v, 'b', 6, 12)
			vb.ForgetForTest(v)
			v2, err := vb.Open(ctx, newStore(t), im.vol, o)
			if err != nil {
				t.Fatal(err)
			}
			im.check(t, "reopened on the same node", v2)
			if err := v2.Close(); err != nil {
				t.Fatal(err)
			}
			im.checkElsewhere(t, "another node", newStore(t))
		})
	}
}

// TestOpenOutcomeUnknown: a writable open whose epoch bump applied but whose
// answer was lost owns the volume; one whose bump did not apply fails
// without claiming a takeover, and the next open succeeds.
func TestOpenOutcomeUnknown(t *testing.T) { forEachStore(t, testOpenOutcomeUnknown) }

func testOpenOutcomeUnknown(t *testing.T, newStore func(t *testing.T) backend.Store) {
	ctx := context.Background()
	st, ls := newLossy(newStore(t))
	im := volImage{vol: "open"}
	if err := vb.CreateOnly(ctx, st, im.vol, imgBlocks*vb.BlockSize); err != nil {
		t.Fatal(err)
	}
	o := quietOpts(t)
	ls.arm(applyLoseAnswer)
	v, err := vb.Open(ctx, st, im.vol, o)
	if err != nil {
		t.Fatalf("open whose epoch bump applied, answer lost: %v", err)
	}
	if s := v.Stats(); s.ResolvedCommits != 1 || s.Epoch != 1 {
		t.Fatalf("stats: %+v; want epoch 1 and one resolved commit", s)
	}
	im.writeFlush(t, v, 'a', 0, 8)
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	ls.arm(dropRequest)
	if _, err := vb.Open(ctx, st, im.vol, o); err == nil || errors.Is(err, vb.ErrFenced) {
		t.Fatalf("open whose epoch bump was lost: %v; want a plain error", err)
	}
	v, err = vb.Open(ctx, st, im.vol, o)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if v.Epoch() != 2 {
		t.Fatalf("epoch %d after a lost bump and a good one, want 2", v.Epoch())
	}
	im.check(t, "reopened", v)
}

// TestCommitTakeoverStillFences: another owner's open fences the old owner
// at its next commit, whether or not that owner's last commit had an unknown
// outcome; so does a manifest that holds our epoch but a state we never
// committed.
func TestCommitTakeoverStillFences(t *testing.T) { forEachStore(t, testCommitTakeoverStillFences) }

func testCommitTakeoverStillFences(t *testing.T, newStore func(t *testing.T) backend.Store) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		arm  func(ls *lossyStore)
	}{
		{"takeover", func(*lossyStore) {}},
		{"takeover-after-lost-answer", func(ls *lossyStore) { ls.arm(applyLoseAnswer); ls.failGets(1) }},
		{"takeover-after-lost-request", func(ls *lossyStore) { ls.arm(dropRequest); ls.failGets(1) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, ls := newLossy(newStore(t))
			im := volImage{vol: tc.name}
			o := quietOpts(t)
			o.LeaseDuration = 2 * time.Second // its flushes must confirm it on a busy disk or S3 server
			v := mustCreate(t, st, im.vol, imgBlocks*vb.BlockSize, o)
			defer v.Close()
			im.writeFlush(t, v, 'a', 0, 8)
			tc.arm(ls)
			_ = v.Drain(ctx)
			im.writeFlush(t, v, 'b', 8, 8) // not committed before the takeover
			// Another node waits out the paused owner's lease and takes
			// the volume over.
			vb.PauseLeaseForTest(v)
			other, err := vb.Open(ctx, newStore(t), im.vol, quietOpts(t))
			if err != nil {
				t.Fatal(err)
			}
			defer other.Close()
			if err := v.Drain(ctx); !errors.Is(err, vb.ErrFenced) {
				t.Fatalf("the old owner's drain after a takeover: %v; want ErrFenced", err)
			}
			if _, err := v.WriteAt(make([]byte, vb.BlockSize), 0); !errors.Is(err, vb.ErrFenced) {
				t.Fatalf("write after the fence: %v; want ErrFenced", err)
			}
			if s := v.Stats(); !s.Fenced || !strings.Contains(s.LastDrainErr, "epoch") {
				t.Fatalf("stats do not show the fence and its cause: %+v", s)
			}
			if _, err := other.WriteAt(make([]byte, vb.BlockSize), 0); err != nil {
				t.Fatal(err)
			}
			if err := other.Drain(ctx); err != nil {
				t.Fatalf("the new owner's drain: %v", err)
			}
		})
	}

	t.Run("our-epoch-foreign-state", func(t *testing.T) {
		st, _ := newLossy(newStore(t))
		im := volImage{vol: "foreign"}
		v := mustCreate(t, st, im.vol, imgBlocks*vb.BlockSize, quietOpts(t))
		defer v.Close()
		im.writeFlush(t, v, 'a', 0, 8)
		if err := v.Drain(ctx); err != nil {
			t.Fatal(err)
		}
		// Someone rewrites the manifest, keeping our epoch and nonce.
		raw := newStore(t)
		b, ver, err := raw.Get(ctx, im.vol+"/manifest")
		if err != nil {
			t.Fatal(err)
		}
		m, err := manifest.Decode(b)
		if err != nil {
			t.Fatal(err)
		}
		m.Size += vb.BlockSize
		m.Committed++
		if _, err := raw.PutIf(ctx, im.vol+"/manifest", manifest.Encode(m), ver); err != nil {
			t.Fatal(err)
		}
		im.writeFlush(t, v, 'b', 8, 8)
		if err := v.Drain(ctx); !errors.Is(err, vb.ErrFenced) {
			t.Fatalf("drain over a manifest we never wrote: %v; want ErrFenced", err)
		}
	})
}

// TestS3CommitAnswerLost: on a real S3 server behind a proxy that loses the
// answers of the manifest's conditional PUTs after the server applied them
// (connection resets, answers held past the attempt timeout) on every
// attempt the store makes, the engine reads the manifest back instead of
// fencing, and every write survives a reopen elsewhere. A real takeover
// still fences.
func TestS3CommitAnswerLost(t *testing.T) {
	t.Parallel()
	srv := s3server.Start(t)
	const prefix = "lost"
	// Faults hit requests for the volume's manifest only (PUT, GET, HEAD).
	p := faultproxy.Start(t, srv.Endpoint, faultproxy.Options{
		Match: func(r *http.Request) bool { return strings.HasSuffix(r.URL.Path, "/"+prefix+"/v/manifest") },
		Delay: 2 * time.Minute, // only the attempt timeout ends a held answer
	})
	// Three attempts of 4 s: a held answer fails the PutIf after about 12 s
	// however loaded the machine is, and an attempt is never cut short by
	// load alone.
	const attempts = 3
	u := s3server.StoreURL(srv.Bucket, prefix, p.URL, srv.CredentialsFile, fmt.Sprintf("max_attempts=%d", attempts), "timeout=4s", "max_backoff=50ms")
	direct := srv.URL(prefix)
	ctx := context.Background()
	o := quietOpts(t)
	im := volImage{vol: "v"}
	vst := openS3(t, u)
	v := mustCreate(t, vst, im.vol, imgBlocks*vb.BlockSize, o)
	defer v.Close()

	step := func(name string, want map[faultproxy.Kind]int, firstOK bool, force func()) {
		t.Helper()
		before := p.Counts()
		im.writeFlush(t, v, name[0], uint64(5*len(name)), 6)
		force()
		start := time.Now()
		err := v.Drain(ctx)
		t.Logf("%s: drain took %v: %v", name, time.Since(start).Round(time.Millisecond), err)
		if errors.Is(err, vb.ErrFenced) || v.Stats().Fenced {
			t.Fatalf("%s: the lost answer fenced the volume: %v", name, err)
		}
		if firstOK && err != nil {
			t.Fatalf("%s: drain: %v", name, err)
		}
		if !firstOK {
			if err == nil {
				t.Fatalf("%s: drain succeeded; want the unresolved commit reported", name)
			}
			im.writeFlush(t, v, name[0]+1, 40, 4)
			if err := v.Drain(ctx); err != nil {
				t.Fatalf("%s: the next drain: %v", name, err)
			}
		}
		after := p.Counts()
		for k, n := range want {
			if got := after[k] - before[k]; got != n {
				t.Fatalf("%s: %d %v faults injected, want %d (counts %v)", name, got, k, n, after)
			}
		}
		im.check(t, name, v)
		t.Logf("%s: %d resolved commits; proxy %v; store %+v", name, v.Stats().ResolvedCommits, p.Counts(), vst.Stats())
	}

	// Every attempt of the PUT applied (the first) or answered 412 (the
	// others), and every answer reset: the store gives up with a reset.
	step("reset", map[faultproxy.Kind]int{faultproxy.ResetAfter: attempts}, true, func() {
		p.Force(faultproxy.ResetAfter, attempts)
	})
	// Every answer held past the attempt timeout.
	step("held", map[faultproxy.Kind]int{faultproxy.Delay: attempts}, true, func() {
		p.Force(faultproxy.Delay, attempts)
	})
	// Reads fail with 500s, not resets: Go's HTTP client repeats a GET or
	// HEAD whose reused connection was reset on its own, which would make
	// the number of faults a read consumes vary.
	//
	// The first answer lost, the retry's 412 delivered, and the store's own
	// read-back (HEAD) fails: the store reports an unknown outcome.
	step("store-read-back-fails", map[faultproxy.Kind]int{faultproxy.ResetAfter: 1, faultproxy.Error500: attempts}, true, func() {
		p.Force(faultproxy.ResetAfter, 1)
		p.Force(faultproxy.None, 1)
		p.Force(faultproxy.Error500, attempts)
	})
	// Every answer lost and the engine's read-back (GET) fails too: the
	// drain fails, and the next one finds the commit applied (its PUT gets
	// a 412), adopts it and drains again on top of it.
	step("engine-read-back-fails", map[faultproxy.Kind]int{faultproxy.ResetAfter: attempts, faultproxy.Error500: attempts}, false, func() {
		p.Force(faultproxy.ResetAfter, attempts)
		p.Force(faultproxy.Error500, attempts)
	})
	if s := v.Stats(); s.ResolvedCommits != 4 || s.Fenced {
		t.Fatalf("stats after four lost answers: %+v; want 4 resolved commits", s)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	im.checkElsewhere(t, "a new node after the lost answers", openS3(t, direct))

	// A real takeover (of a paused owner) still fences, through the same
	// proxy. The lease is long enough for the drain before the pause to
	// confirm it on a busy S3 server.
	o.LeaseDuration = 2 * time.Second
	v, err := vb.Open(ctx, openS3(t, u), "v", o)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	im.writeFlush(t, v, 'x', 50, 4)
	if err := v.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	vb.PauseLeaseForTest(v)
	other, err := vb.Open(ctx, openS3(t, direct), "v", quietOpts(t))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	im.check(t, "the new owner", other)
	if _, err := v.WriteAt(make([]byte, vb.BlockSize), 0); err != nil {
		t.Fatal(err)
	}
	p.Force(faultproxy.ResetAfter, 1) // and its answer lost: still a takeover
	if err := v.Drain(ctx); !errors.Is(err, vb.ErrFenced) {
		t.Fatalf("the old owner's drain after a takeover: %v; want ErrFenced", err)
	}
}
