package viperblock_test

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/internal/testutil"
	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

func leaseOpts(t *testing.T, d time.Duration) vb.Options {
	o := opts(t)
	o.Logger = quiet()
	o.LeaseDuration = d
	o.DrainInterval = time.Hour
	return o
}

// A live owner asked to release the volume drains everything it took (even
// writes never flushed), gives up its lease, and fails every write and
// flush from then on; the taker opens at once (not after the lease expires)
// with all of it.
func TestLeaseRelease(t *testing.T) { forEachStore(t, testLeaseRelease) }

func testLeaseRelease(t *testing.T, newStore func(t *testing.T) backend.Store) {
	ctx := context.Background()
	// Long leases: the bound below must tell an answer at the next
	// renewal (d/4) plus a drain on a busy disk from an expiry (1.2 d).
	const d = 8 * time.Second
	a := mustCreate(t, newStore(t), "v", 1<<20, leaseOpts(t, d))
	defer a.Close()
	if _, err := a.WriteAt(fill(1, 4096), 0); err != nil {
		t.Fatal(err)
	}
	if err := a.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.WriteAt(fill(2, 4096), 4096); err != nil { // never flushed
		t.Fatal(err)
	}
	start := time.Now()
	b, err := vb.Open(ctx, newStore(t), "v", leaseOpts(t, d))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	// The holder answers at its next renewal (every duration/4); expiry
	// would take 1.2 durations after the taker first saw the lease.
	if took := time.Since(start); took > 3*d/4 {
		t.Errorf("takeover of a live owner took %s; the release should answer within a renewal period", took)
	}
	got := readAll(t, b)
	if !bytes.Equal(got[:4096], fill(1, 4096)) || !bytes.Equal(got[4096:8192], fill(2, 4096)) {
		t.Fatal("the taker does not see everything the released owner took")
	}
	if _, err := a.WriteAt(fill(3, 4096), 0); !errors.Is(err, vb.ErrFenced) {
		t.Fatalf("write on the released owner: %v; want ErrFenced", err)
	}
	if err := a.Flush(); !errors.Is(err, vb.ErrFenced) {
		t.Fatalf("flush on the released owner: %v; want ErrFenced", err)
	}
	if s := a.Stats(); !s.Fenced || !strings.Contains(s.LastDrainErr, "released") {
		t.Fatalf("the released owner's stats: %+v", s)
	}
	if err := a.Close(); err != nil {
		t.Fatalf("close of a released volume (nothing pending): %v", err)
	}
	if _, err := b.WriteAt(fill(4, 4096), 0); err != nil {
		t.Fatal(err)
	}
	if err := b.Flush(); err != nil {
		t.Fatal(err)
	}
}

// The check the lease exists for: owner A is paused after a committed
// write; B waits out A's lease, opens the volume, writes and flushes; A
// runs again, and its write + flush must fail; B's flushed write and A's
// committed write survive, and A's late write never reaches the store.
func TestLeasePausedOwner(t *testing.T) { forEachStore(t, testLeasePausedOwner) }

func testLeasePausedOwner(t *testing.T, newStore func(t *testing.T) backend.Store) {
	ctx := context.Background()
	// A's lease is long enough for its drain to confirm it on a busy
	// disk or S3 server; B's is longer still, as nothing waits for it.
	const d = 2 * time.Second
	a := mustCreate(t, newStore(t), "v", 1<<20, leaseOpts(t, d))
	defer a.Close()
	if _, err := a.WriteAt(fill(1, 4096), 0); err != nil {
		t.Fatal(err)
	}
	if err := a.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	vb.PauseLeaseForTest(a) // A stops: no renewals, no answers
	start := time.Now()
	b, err := vb.Open(ctx, newStore(t), "v", leaseOpts(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if took := time.Since(start); took < 6*d/5 {
		t.Fatalf("took a paused owner's lease after %s; it must wait 1.2 durations", took)
	}
	if _, err := b.WriteAt(fill(2, 4096), 4096); err != nil {
		t.Fatal(err)
	}
	if err := b.Flush(); err != nil {
		t.Fatal(err)
	}
	// A runs again: its write is taken into memory, its flush must fail.
	if _, err := a.WriteAt(fill(3, 4096), 8192); err != nil && !errors.Is(err, vb.ErrFenced) {
		t.Fatal(err)
	}
	if err := a.Flush(); err == nil {
		t.Fatal("the paused owner confirmed a flush after another node took the volume over")
	} else if !errors.Is(err, vb.ErrFenced) {
		t.Fatalf("the paused owner's flush: %v; want ErrFenced", err)
	}
	if err := a.Drain(ctx); !errors.Is(err, vb.ErrFenced) {
		t.Fatalf("the paused owner's drain: %v; want ErrFenced", err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	c, err := vb.Open(ctx, newStore(t), "v", vb.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	got := readAll(t, c)
	if !bytes.Equal(got[:4096], fill(1, 4096)) || !bytes.Equal(got[4096:8192], fill(2, 4096)) || !bytes.Equal(got[8192:12288], make([]byte, 4096)) {
		t.Fatal("the store does not hold exactly A's committed write and B's flushed write")
	}
}

// failingLease fails lease writes while on, as a partition from the store
// would.
type failingLease struct {
	backend.Store
	on atomic.Bool
}

func (f *failingLease) PutIf(ctx context.Context, key string, data []byte, v backend.Version) (backend.Version, error) {
	if f.on.Load() && strings.HasSuffix(key, "/lease") {
		return "", errors.New("injected: store unreachable")
	}
	return f.Store.PutIf(ctx, key, data, v)
}

func (f *failingLease) Get(ctx context.Context, key string) ([]byte, backend.Version, error) {
	if f.on.Load() && strings.HasSuffix(key, "/lease") {
		return nil, "", errors.New("injected: store unreachable")
	}
	return f.Store.Get(ctx, key)
}

// A flush is confirmed only while the lease is valid by the owner's own
// clock. After a pause (its clock jumped) the owner renews before it
// confirms; if it cannot renew, the flush fails with ErrLeaseExpired and
// succeeds again once a renewal does.
func TestLeaseClock(t *testing.T) {
	fl := &failingLease{Store: backend.NewMem()}
	var now atomic.Int64
	now.Store(int64(time.Hour))
	o := leaseOpts(t, time.Minute) // the loop renews every 15 s: never during this test
	vb.SetClockForTest(&o, func() time.Duration { return time.Duration(now.Load()) })
	v := mustCreate(t, fl, "v", 1<<20, o)
	defer v.Close()
	write := func(b byte) error {
		if _, err := v.WriteAt(fill(b, 4096), 0); err != nil {
			return err
		}
		return v.Flush()
	}
	if err := write(1); err != nil {
		t.Fatal(err)
	}
	now.Add(int64(47 * time.Second)) // still within 0.8 of a minute
	if err := write(2); err != nil {
		t.Fatal(err)
	}
	now.Add(int64(10 * time.Minute)) // a long pause: renew first
	if err := write(3); err != nil {
		t.Fatalf("flush after a pause, store reachable: %v", err)
	}
	fl.on.Store(true)
	now.Add(int64(49 * time.Second)) // the renewal that validated write 3 was sent 49 s ago
	if err := write(4); !errors.Is(err, vb.ErrLeaseExpired) {
		t.Fatalf("flush with an expired lease and the store unreachable: %v; want ErrLeaseExpired", err)
	}
	fl.on.Store(false)
	if err := write(5); err != nil {
		t.Fatalf("flush once the store is back: %v", err)
	}
}

// A node reopening a volume after its process died (same WAL directory)
// takes the lease back at once, without waiting for it to expire, and
// replays its WAL.
func TestLeaseSameNodeRestart(t *testing.T) {
	ctx := context.Background()
	s := backend.NewMem()
	o := leaseOpts(t, time.Hour)
	a := mustCreate(t, s, "v", 1<<20, o)
	if _, err := a.WriteAt(fill(7, 4096), 0); err != nil {
		t.Fatal(err)
	}
	if err := a.Flush(); err != nil {
		t.Fatal(err)
	}
	vb.ForgetForTest(a) // kill -9
	start := time.Now()
	o.TakeoverTimeout = time.Second // would fail the open if it waited
	b, err := vb.Open(ctx, s, "v", o)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("reopen on the same WAL directory took %s", took)
	}
	if got := readAll(t, b); !bytes.Equal(got[:4096], fill(7, 4096)) {
		t.Fatal("flushed write lost across the restart")
	}
	// Another node, by contrast, must wait: it cannot take a live lease.
	if _, err := vb.Open(ctx, s, "v", vb.Options{WALDir: t.TempDir(), Logger: quiet(), LeaseDuration: time.Second, TakeoverTimeout: time.Second}); err == nil {
		t.Fatal("another node took a live lease")
	}
}

// A resume-only open never takes a lease another open holds, and never
// waits for it: not once the other open has bumped the epoch, and not
// while it holds the lease before its bump (the manifest still names this
// WAL directory's owner).
func TestLeaseResumeOnly(t *testing.T) {
	ctx := context.Background()
	s := backend.NewMem()
	walA := t.TempDir()
	oa := leaseOpts(t, time.Second)
	oa.WALDir = walA
	a := mustCreate(t, s, "v", 1<<20, oa)
	vb.ForgetForTest(a) // the server died; the manifest and the lease are still A's
	oa.ResumeOnly = true
	oa.LeaseDuration = time.Hour
	// Another node has taken the lease but not bumped the epoch yet.
	if err := vb.HoldLeaseForTest(ctx, s, "v", time.Hour); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := vb.Open(ctx, s, "v", oa); !errors.Is(err, vb.ErrNotOwner) || !strings.Contains(err.Error(), "lease") {
		t.Fatalf("resume-only open while another open holds the lease: %v; want ErrNotOwner about the lease", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("the refused resume-only open waited %s", took)
	}
	// The lease expires; another node takes the volume and bumps the epoch.
	if err := vb.HoldLeaseForTest(ctx, s, "v", time.Second); err != nil {
		t.Fatal(err)
	}
	b, err := vb.Open(ctx, s, "v", leaseOpts(t, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := vb.Open(ctx, s, "v", oa); !errors.Is(err, vb.ErrNotOwner) {
		t.Fatalf("resume-only open of a volume another node owns: %v; want ErrNotOwner", err)
	}
}

// failingDrain fails chunk uploads while on, so a release cannot drain.
type failingDrain struct {
	backend.Store
	on atomic.Bool
}

func (f *failingDrain) Put(ctx context.Context, key string, data []byte) error {
	if f.on.Load() && strings.Contains(key, "/chunks/") {
		return errors.New("injected: upload failed")
	}
	return f.Store.Put(ctx, key, data)
}

// A live holder that cannot drain keeps the volume (releasing would lose
// what it confirmed): the taker gives up after its TakeoverTimeout with
// ErrInUse, and the holder goes on serving.
func TestLeaseTakeoverTimeout(t *testing.T) {
	ctx := context.Background()
	fd := &failingDrain{Store: backend.NewMem()}
	a := mustCreate(t, fd, "v", 1<<20, leaseOpts(t, 500*time.Millisecond))
	defer a.Close()
	if _, err := a.WriteAt(fill(1, 4096), 0); err != nil {
		t.Fatal(err)
	}
	fd.on.Store(true)
	ob := leaseOpts(t, 500*time.Millisecond)
	ob.TakeoverTimeout = 2 * time.Second
	if _, err := vb.Open(ctx, fd.Store, "v", ob); !errors.Is(err, vb.ErrInUse) {
		t.Fatalf("takeover of a live holder that cannot release: %v; want ErrInUse", err)
	}
	if _, err := a.WriteAt(fill(2, 4096), 0); err != nil {
		t.Fatalf("the holder stopped serving: %v", err)
	}
	if err := a.Flush(); err != nil {
		t.Fatalf("the holder's flush: %v", err)
	}
	fd.on.Store(false)
}

// Many flushes racing a takeover, of a live owner (which releases) and of
// a partitioned one (whose lease expires): no flush of the old owner that
// started after the taker's open returned succeeds.
func TestLeaseNoFlushAfterTakeover(t *testing.T) {
	for _, partitioned := range []bool{false, true} {
		name := "release"
		if partitioned {
			name = "partition"
		}
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			mem := backend.NewMem()
			fl := &failingLease{Store: mem}
			a := mustCreate(t, fl, "v", 1<<20, leaseOpts(t, 500*time.Millisecond))
			defer a.Close()
			var lastOK atomic.Int64
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for g := 0; g < 4; g++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						select {
						case <-stop:
							return
						default:
						}
						if _, err := a.WriteAt(fill(byte(g), 4096), int64(g)*4096); err != nil {
							return
						}
						started := time.Now().UnixNano()
						if a.Flush() == nil {
							lastOK.Store(started)
						}
					}
				}()
			}
			// At least one flush confirmed before the partition, or
			// there is nothing to test (the first creates the WAL, with
			// fsyncs that a busy disk makes slow).
			if err := testutil.WaitFor(ctx, 30*time.Second, func() (bool, error) { return lastOK.Load() != 0, nil }); err != nil {
				close(stop)
				wg.Wait()
				t.Fatalf("no flush succeeded before the partition: %v", err)
			}
			fl.on.Store(partitioned)
			b, err := vb.Open(ctx, mem, "v", leaseOpts(t, time.Second))
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			opened := time.Now().UnixNano()
			time.Sleep(300 * time.Millisecond) // not synchronisation: let the old owner try
			close(stop)
			wg.Wait()
			if l := lastOK.Load(); l > opened {
				t.Fatalf("the old owner confirmed a flush that started %s after the takeover", time.Duration(l-opened))
			}
			if lastOK.Load() == 0 {
				t.Fatal("no flush succeeded before the takeover (nothing tested)")
			}
		})
	}
}

// Stale WALs set aside at open are removed by a later open once their
// retention has passed, and kept before that.
func TestStaleWALRetention(t *testing.T) {
	ctx := context.Background()
	s := backend.NewMem()
	walA := t.TempDir()
	oa := leaseOpts(t, 500*time.Millisecond)
	oa.WALDir = walA
	a := mustCreate(t, s, "v", 1<<20, oa)
	a.WriteAt(fill(1, 4096), 0)
	if err := a.Flush(); err != nil {
		t.Fatal(err)
	}
	vb.ForgetForTest(a)
	b, err := vb.Open(ctx, s, "v", leaseOpts(t, 500*time.Millisecond)) // another node
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	a2, err := vb.Open(ctx, s, "v", oa) // A again: its WAL is set aside
	if err != nil {
		t.Fatal(err)
	}
	if err := a2.Close(); err != nil {
		t.Fatal(err)
	}
	stale, _ := filepath.Glob(filepath.Join(walA, "v", "stale-*"))
	if len(stale) != 1 {
		t.Fatalf("stale WALs after the takeover: %v", stale)
	}
	if gone, err := vb.PruneStaleWALs(nil, walA, "v", time.Hour, time.Now()); err != nil || len(gone) != 0 {
		t.Fatalf("pruned within the retention: %v, %v", gone, err)
	}
	if gone, err := vb.PruneStaleWALs(nil, walA, "v", -1, time.Now().Add(100*time.Hour)); err != nil || len(gone) != 0 {
		t.Fatalf("pruned with retention forever: %v, %v", gone, err)
	}
	oa.StaleRetention = time.Nanosecond
	a3, err := vb.Open(ctx, s, "v", oa)
	if err != nil {
		t.Fatal(err)
	}
	a3.Close()
	if stale, _ := filepath.Glob(filepath.Join(walA, "v", "stale-*")); len(stale) != 0 {
		t.Fatalf("stale WALs past their retention kept: %v", stale)
	}
}

// An owner that was paused (or partitioned) past its lease and then runs
// again writes nothing to the store once another open has taken the volume
// over: its drain (node durability: tried first) and its flush (store
// durability, tried first: a store-log upload) renew first, find the
// taker's lease, and fail with ErrFenced before any upload.
func TestLeaseStaleOwnerUploadsNothing(t *testing.T) {
	for _, class := range []vb.Durability{vb.DurabilityNode, vb.DurabilityStore} {
		t.Run(string(class), func(t *testing.T) {
			ctx := context.Background()
			mem := backend.NewMem()
			if err := vb.CreateWithClass(ctx, mem, "v", 1<<20, class); err != nil {
				t.Fatal(err)
			}
			a, err := vb.Open(ctx, mem, "v", leaseOpts(t, 500*time.Millisecond))
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			if _, err := a.WriteAt(fill(1, 4096), 0); err != nil {
				t.Fatal(err)
			}
			if err := a.Flush(); err != nil {
				t.Fatal(err)
			}
			vb.PauseLeaseForTest(a)
			b, err := vb.Open(ctx, mem, "v", leaseOpts(t, time.Second))
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			if err := b.Drain(ctx); err != nil { // B's own work done
				t.Fatal(err)
			}
			before, err := mem.List(ctx, "")
			if err != nil {
				t.Fatal(err)
			}
			// A runs again with writes in memory: they must not reach the
			// store.
			if _, err := a.WriteAt(fill(2, 8192), 4096); err != nil && !errors.Is(err, vb.ErrFenced) {
				t.Fatal(err)
			}
			first, second := a.Drain, func(context.Context) error { return a.Flush() }
			if class == vb.DurabilityStore {
				first, second = second, first
			}
			if err := first(ctx); !errors.Is(err, vb.ErrFenced) {
				t.Fatalf("the stale owner's first drain or flush: %v; want ErrFenced", err)
			}
			if err := second(ctx); !errors.Is(err, vb.ErrFenced) {
				t.Fatalf("the stale owner's second drain or flush: %v; want ErrFenced", err)
			}
			after, err := mem.List(ctx, "")
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(before, "\n") != strings.Join(after, "\n") {
				t.Fatalf("the stale owner changed the store's objects:\nbefore %v\nafter  %v", before, after)
			}
		})
	}
}
