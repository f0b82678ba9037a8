package viperblock

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/wal"
)

// # Ownership leases
//
// The epoch bump (a compare-and-swap on the manifest) makes a stale owner's
// next commit fail, but a commit can be seconds away, and until then a stale
// owner would go on confirming flushes for writes that the new owner never
// sees. So a writable open also holds a lease, and confirms a Flush only
// while the lease is valid by its own clock.
//
// The lease is an object, <volume>/lease, written only by compare-and-swap
// (PutIf on the version last seen):
//
//	offset  size  field
//	0       8     magic "VBLEASE1"
//	8       2     format version (1)
//	10      2     flags: bit 0 released (the holder let go cleanly: anyone may take it at once)
//	12      4     reserved, zero
//	16      8     epoch the holder owns (0 while it is taking the volume, before its epoch bump)
//	24      16    holder nonce: random per open; after the epoch bump, the manifest's owner nonce
//	40      8     duration in nanoseconds (the holder's; takers wait by the holder's duration)
//	48      8     renewal counter: every write of the object carries a new value, so no two
//	              writes encode alike (a store whose version is a content hash still sees a change)
//	56      4     reserved, zero
//	60      4     CRC32C of bytes [0, 60)
//
// Holder. The holder renews every duration/4 by writing the object with the
// next counter. It records, on its own clock, the time t it sent each
// renewal; once the renewal is known to have applied (its answer, or the
// object read back holding exactly that counter and nonce) the lease is
// valid until t + duration - margin, margin = duration/5. A Flush (and so a
// FUA write) is confirmed only after the WAL is synced and only while the
// lease is valid; otherwise it tries one renewal at once and, failing that,
// fails with ErrLeaseExpired (EIO through NBD). Writes are still taken into
// memory (they promise nothing until a flush). A renewal that finds another
// holder's nonce fences the volume.
//
// Taker. A writable Open reads the lease and takes it (a PutIf on the
// version read, writing its own nonce) at once when the object is missing,
// released, or held by a nonce this WAL directory's OWNER file names (the
// same node reopening after a crash: the .lock on the WAL directory, held
// by the open, proves that process is gone). Otherwise it writes a release
// request (below) and polls the lease: when the holder answers (it drains,
// commits with the volume marked closed, and marks the lease released) the
// taker takes it; if the object stays exactly the same version for the
// holder's duration + margin on the taker's own clock, the lease has
// expired and the taker takes it. A live holder that renews but does not
// release within Options.TakeoverTimeout fails the open with ErrInUse.
// After taking the lease the taker reads the manifest again and bumps the
// epoch as before; the old holder's late commits fail that compare-and-swap.
//
// Clock assumptions. Each side measures only intervals on its own clock,
// CLOCK_BOOTTIME (monotonic, and counting time the machine was suspended).
// The holder stops confirming at most 0.8 duration after it sent its last
// renewal; the taker waits at least 1.2 duration after it first saw that
// renewal, which is after it was sent. That is safe while the two clocks'
// rates differ by less than 1.2/0.8 (50%); no bound on pauses is needed: a
// holder paused at any point finds, when it runs again, an expired lease
// and renews before confirming anything, and a renewal after a takeover
// fails its compare-and-swap. A reply already decided before a pause may
// reach the client late; it was decided while the lease was valid.
//
// <volume>/release, the release request (version 1, 36 bytes):
//
//	0   8   magic "VBRELRQ1"
//	8   8   time of the request (Unix ns; informational)
//	16  16  the requester's nonce
//	32  4   CRC32C of bytes [0, 32)
//
// The holder reads it at every renewal and answers a request it has not
// answered yet by releasing the volume: writes and flushes fail from then
// on (ErrFenced), everything is drained and committed as by Close, and the
// lease is marked released.
const (
	// DefaultLeaseDuration is the lease duration when Options.LeaseDuration
	// is zero.
	DefaultLeaseDuration = 15 * time.Second
	// MinLeaseDuration is the shortest lease accepted.
	MinLeaseDuration = 500 * time.Millisecond

	leaseMagic   = "VBLEASE1"
	releaseMagic = "VBRELRQ1"
	leaseLen     = 64
	releaseLen   = 36
)

// ErrLeaseExpired: a Flush could not be confirmed because this open's
// ownership lease is not valid by its own clock (it could not renew it in
// time: the store is unreachable, or the process was paused). The data is
// in the WAL; flushes succeed again once a renewal succeeds, unless another
// owner has taken the volume over meanwhile (then ErrFenced).
var ErrLeaseExpired = errors.New("viperblock: ownership lease not valid: cannot confirm the flush")

func leaseKey(vol string) string   { return vol + "/lease" }
func releaseKey(vol string) string { return vol + "/release" }

type leaseRecord struct {
	released bool
	epoch    uint64
	nonce    [16]byte
	duration time.Duration
	counter  uint64
}

func (l leaseRecord) encode() []byte {
	b := make([]byte, 0, leaseLen)
	b = append(b, leaseMagic...)
	b = binary.LittleEndian.AppendUint16(b, 1)
	var flags uint16
	if l.released {
		flags |= 1
	}
	b = binary.LittleEndian.AppendUint16(b, flags)
	b = append(b, 0, 0, 0, 0)
	b = binary.LittleEndian.AppendUint64(b, l.epoch)
	b = append(b, l.nonce[:]...)
	b = binary.LittleEndian.AppendUint64(b, uint64(l.duration))
	b = binary.LittleEndian.AppendUint64(b, l.counter)
	b = append(b, 0, 0, 0, 0)
	return binary.LittleEndian.AppendUint32(b, wal.CRC(b))
}

func decodeLease(b []byte) (leaseRecord, error) {
	var l leaseRecord
	if len(b) != leaseLen || string(b[:8]) != leaseMagic {
		return l, fmt.Errorf("%w: lease object malformed (%d bytes)", ErrCorrupt, len(b))
	}
	if v := binary.LittleEndian.Uint16(b[8:]); v != 1 {
		return l, fmt.Errorf("%w: lease object version %d", ErrCorrupt, v)
	}
	if binary.LittleEndian.Uint32(b[60:]) != wal.CRC(b[:60]) {
		return l, fmt.Errorf("%w: lease object CRC mismatch", ErrCorrupt)
	}
	flags := binary.LittleEndian.Uint16(b[10:])
	if flags&^1 != 0 {
		return l, fmt.Errorf("%w: lease object has unknown flags %#x", ErrCorrupt, flags)
	}
	l.released = flags&1 != 0
	l.epoch = binary.LittleEndian.Uint64(b[16:])
	copy(l.nonce[:], b[24:40])
	l.duration = time.Duration(binary.LittleEndian.Uint64(b[40:]))
	l.counter = binary.LittleEndian.Uint64(b[48:])
	if l.duration < MinLeaseDuration || l.duration > time.Hour {
		return l, fmt.Errorf("%w: lease duration %s out of range", ErrCorrupt, l.duration)
	}
	return l, nil
}

func encodeRelease(nonce [16]byte, at time.Time) []byte {
	b := make([]byte, 0, releaseLen)
	b = append(b, releaseMagic...)
	b = binary.LittleEndian.AppendUint64(b, uint64(at.UnixNano()))
	b = append(b, nonce[:]...)
	return binary.LittleEndian.AppendUint32(b, wal.CRC(b))
}

func decodeRelease(b []byte) ([16]byte, error) {
	var n [16]byte
	if len(b) != releaseLen || string(b[:8]) != releaseMagic || binary.LittleEndian.Uint32(b[32:]) != wal.CRC(b[:32]) {
		return n, fmt.Errorf("%w: release request malformed", ErrCorrupt)
	}
	copy(n[:], b[16:32])
	return n, nil
}

// leaseMargin is the safety margin of a lease of duration d (see above).
func leaseMargin(d time.Duration) time.Duration { return d / 5 }

// leaseState is an open's lease. mu serializes renewals and guards the
// fields; valid and lost are read without it.
type leaseState struct {
	mu       sync.Mutex
	held     bool // taken and not given up
	rec      leaseRecord
	ver      backend.Version
	sent     map[uint64]time.Duration // clock at send, of renewals whose outcome is unknown, by counter
	answered [16]byte                 // the last release request answered
	watching atomic.Bool              // a handoff watcher runs (handoff.go)
	deadHand backend.Version          // a handoff object version found dead or unreadable
	valid    atomic.Int64             // clock value until which the lease is valid
	stop     chan struct{}            // stops the renewal loop
	done     sync.WaitGroup
	started  bool
}

// leaseChecks: a build with the tag viperblock_nolease confirms flushes
// without a valid lease. It exists only to show that the nemesis test
// catches the bug; never ship it.
var leaseChecks = true

func (v *Volume) now() time.Duration {
	if v.opts.clock != nil {
		return v.opts.clock()
	}
	return bootClock()
}

// leaseValid reports whether the lease is valid now by this open's clock.
func (v *Volume) leaseValid() bool {
	return v.now() < time.Duration(v.lease.valid.Load())
}

// acquireLease takes the volume's lease for nonce, for an open whose WAL
// directory's OWNER file reads own (see the package comment above).
func (v *Volume) acquireLease(ctx context.Context, own ownerRecord, nonce [16]byte) error {
	d := v.opts.LeaseDuration
	poll := min(max(d/10, 20*time.Millisecond), time.Second)
	limit := v.opts.TakeoverTimeout
	if v.opts.handoff {
		// A handoff (handoff.go): the guest is paused while this waits.
		poll, limit = handoffPoll, v.opts.HandoffTimeout
	}
	start := v.now()
	var (
		seenVer  backend.Version
		seenAt   time.Duration
		seen     bool
		askedAt  time.Duration
		asked    bool
		lastHeld leaseRecord
		live     bool // the holder renewed while this open watched
	)
	for {
		b, ver, err := v.store.Get(ctx, leaseKey(v.name))
		var cur leaseRecord
		free, why := false, ""
		switch {
		case errors.Is(err, backend.ErrNotFound):
			free, why, ver = true, "no lease", ""
		case err != nil:
			return fmt.Errorf("viperblock: read the lease of %s: %w", v.name, err)
		default:
			cur, err = decodeLease(b)
			if err != nil {
				// Unreadable: treat it as held, by nobody we know, for
				// the default duration; it is overwritten once that has
				// passed with the object unchanged.
				v.log.Warn("lease object unreadable; waiting as if held", "err", err)
				cur = leaseRecord{duration: DefaultLeaseDuration}
			}
			switch {
			case err == nil && cur.released:
				free, why = true, "released"
			case err == nil && (cur.nonce == own.nonce || (own.pendingEpoch != 0 && cur.nonce == own.pendingNonce)) && own.nonce != [16]byte{}:
				free, why = true, "held by this WAL directory's previous open"
			}
		}
		if !free {
			if v.opts.ResumeOnly {
				return fmt.Errorf("%w: %s: the lease is held by another open (nonce %x, epoch %d)", ErrNotOwner, v.name, cur.nonce[:4], cur.epoch)
			}
			if !seen || ver != seenVer {
				live = live || seen
				seen, seenVer, seenAt, lastHeld = true, ver, v.now(), cur
			} else if v.now()-seenAt >= lastHeld.duration+leaseMargin(lastHeld.duration) {
				free, why = true, fmt.Sprintf("expired (unchanged for %s)", (v.now()-seenAt).Round(time.Millisecond))
			}
		}
		if free {
			rec := leaseRecord{nonce: nonce, duration: d, counter: 1}
			sent := v.now()
			nver, perr := v.store.PutIf(ctx, leaseKey(v.name), rec.encode(), ver)
			if perr != nil {
				// The answer may have been lost after the write applied.
				if got, gver, gerr := v.store.Get(ctx, leaseKey(v.name)); gerr == nil && bytes.Equal(got, rec.encode()) {
					nver, perr = gver, nil
				}
			}
			if perr == nil {
				l := &v.lease
				l.mu.Lock()
				l.held, l.rec, l.ver, l.sent = true, rec, nver, map[uint64]time.Duration{}
				l.valid.Store(int64(sent + d - leaseMargin(d)))
				l.mu.Unlock()
				if seen && why != "held by this WAL directory's previous open" {
					v.log.Info("took the ownership lease", "previous_holder", fmt.Sprintf("%x", lastHeld.nonce[:4]), "how", why)
				}
				if asked {
					_ = v.store.Delete(ctx, releaseKey(v.name))
				}
				return nil
			}
			if !errors.Is(perr, backend.ErrPrecondition) {
				return fmt.Errorf("viperblock: take the lease of %s: %w", v.name, perr)
			}
			seen = false // someone else moved it: look again
			continue
		}
		if !asked || v.now()-askedAt > max(d, time.Second) {
			if perr := v.store.Put(ctx, releaseKey(v.name), encodeRelease(nonce, time.Now())); perr != nil {
				v.log.Warn("could not ask the lease holder to release", "err", perr)
			} else {
				if !asked {
					v.log.Info("volume held by another open: asked it to release; waiting for that or for its lease to expire",
						"holder", fmt.Sprintf("%x", cur.nonce[:4]), "lease", cur.duration)
				}
				asked, askedAt = true, v.now()
			}
		}
		if v.now()-start > limit && (live || !v.opts.handoff) {
			// A handoff waits on for a holder that stopped renewing: its
			// lease expires within 1.2 durations.
			return fmt.Errorf("%w: %s: another open holds its lease and kept renewing it for %s without releasing it",
				ErrInUse, v.name, limit)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("viperblock: take the lease of %s: %w", v.name, ctx.Err())
		case <-time.After(poll):
		}
	}
}

// renewLease writes the lease with the next counter (see the package
// comment). It fences the volume if another open holds the lease now.
func (v *Volume) renewLease(ctx context.Context) error {
	l := &v.lease
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.held {
		return fmt.Errorf("%w: %s: the lease is not held", ErrFenced, v.name)
	}
	next := l.rec
	next.epoch = v.epoch
	next.counter = l.rec.counter + 1
	for c := range l.sent {
		next.counter = max(next.counter, c+1)
	}
	sent := v.now()
	l.sent[next.counter] = sent
	ver, err := v.store.PutIf(ctx, leaseKey(v.name), next.encode(), l.ver)
	if err == nil {
		l.adopt(next, ver, sent)
		return nil
	}
	// Read back: did one of our renewals apply after all?
	b, cv, gerr := v.store.Get(context.WithoutCancel(ctx), leaseKey(v.name))
	if errors.Is(gerr, backend.ErrNotFound) {
		l.held = false
		return v.fence(fmt.Errorf("the lease object is gone (renewal: %v)", err))
	}
	if gerr != nil {
		return fmt.Errorf("viperblock: renew the lease of %s: %w (reading it back: %v)", v.name, err, gerr)
	}
	cur, derr := decodeLease(b)
	if derr != nil || cur.nonce != l.rec.nonce || cur.released {
		l.held = false
		return v.fence(fmt.Errorf("another open holds the lease now (nonce %x, epoch %d; renewal: %v)", cur.nonce[:4], cur.epoch, err))
	}
	if t, ok := l.sent[cur.counter]; ok {
		l.adopt(cur, cv, t)
		return nil
	}
	if cur.counter == l.rec.counter {
		// Our last known renewal is still the lease; only the version
		// moved (or nothing applied): retry on the version read.
		l.ver = cv
		return fmt.Errorf("viperblock: renew the lease of %s: %w", v.name, err)
	}
	l.held = false
	return v.fence(fmt.Errorf("the lease holds our nonce with a renewal we never sent (counter %d)", cur.counter))
}

// adopt records that renewal rec, sent at clock value sent, applied as
// version ver. l.mu must be held.
func (l *leaseState) adopt(rec leaseRecord, ver backend.Version, sent time.Duration) {
	l.rec, l.ver = rec, ver
	clear(l.sent)
	until := int64(sent + rec.duration - leaseMargin(rec.duration))
	if until > l.valid.Load() {
		l.valid.Store(until)
	}
}

// mayUpload returns nil if this open may upload to the store now: see
// confirm. When it cannot renew its lease it reads the manifest, and an
// epoch or owner other than its own fences it at once (a read, where an
// upload would have found out only at the commit).
func (v *Volume) mayUpload(ctx context.Context) error {
	err := v.confirm()
	if err == nil || errors.Is(err, ErrFenced) {
		return err
	}
	if m, _, merr := readLiveManifest(ctx, v.store, v.name); merr == nil && (m.Epoch != v.epoch || m.Owner != v.owner) {
		return v.fence(fmt.Errorf("the manifest is at epoch %d, ours is %d (lease: %v)", m.Epoch, v.epoch, err))
	}
	return err
}

// giveUpLease marks the lease released (after a clean close or a release),
// so that the next open anywhere takes it at once. Best effort: if it
// fails, the lease simply expires.
func (v *Volume) giveUpLease(ctx context.Context) {
	l := &v.lease
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.held {
		return
	}
	l.held = false
	l.valid.Store(0)
	next := l.rec
	next.released = true
	next.counter++
	for c := range l.sent {
		next.counter = max(next.counter, c+1)
	}
	if _, err := v.store.PutIf(ctx, leaseKey(v.name), next.encode(), l.ver); err != nil {
		v.log.Warn("could not mark the lease released; it expires on its own", "err", err)
	}
}

// startLease starts the renewal loop.
func (v *Volume) startLease() {
	l := &v.lease
	if !l.held || l.started {
		return
	}
	l.started = true
	l.stop = make(chan struct{})
	l.done.Add(1)
	go v.leaseLoop()
}

// stopLease stops the renewal loop and waits for it.
func (v *Volume) stopLease() {
	l := &v.lease
	if !l.started {
		return
	}
	l.started = false
	close(l.stop)
	l.done.Wait()
}

// leaseLoop renews the lease every duration/4 and answers release requests.
func (v *Volume) leaseLoop() {
	l := &v.lease
	defer l.done.Done()
	period := v.opts.LeaseDuration / 4
	t := time.NewTimer(period)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		if st := v.state.Load(); st == stateFenced || st == stateReleased {
			// Another owner has the manifest: let takers in at once.
			v.giveUpLease(context.Background())
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), period)
		err := v.renewLease(ctx)
		cancel()
		v.stats.m.leaseRenewed(err)
		if errors.Is(err, ErrFenced) {
			return
		}
		if err != nil {
			v.log.Warn("lease renewal failed; retrying", "err", err, "valid_for", (time.Duration(l.valid.Load()) - v.now()).Round(time.Millisecond))
		} else {
			v.pollRelease()
			v.pollHandoff()
		}
		t.Reset(period)
	}
}

// pollRelease answers a release request not answered yet (see above): the
// release runs beside the renewal loop, which goes on renewing the lease
// while the release drains (a drain can outlast a lease).
func (v *Volume) pollRelease() {
	ctx, cancel := context.WithTimeout(context.Background(), v.opts.LeaseDuration)
	defer cancel()
	b, _, err := v.store.Get(ctx, releaseKey(v.name))
	if err != nil {
		if !errors.Is(err, backend.ErrNotFound) {
			v.log.Warn("could not read release requests", "err", err)
		}
		return
	}
	who, err := decodeRelease(b)
	l := &v.lease
	l.mu.Lock()
	mine := l.rec.nonce
	l.mu.Unlock()
	if err != nil || who == mine || who == l.answered || v.state.Load() != stateOpen {
		return
	}
	l.answered = who
	l.done.Add(1)
	go func() {
		defer l.done.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		v.release(ctx, who)
	}()
}

// release stops taking writes, drains everything and commits with the
// volume marked closed, and gives up the lease, for the open with nonce
// who. If the drain fails the volume goes on serving and the requester
// keeps waiting (until its TakeoverTimeout).
func (v *Volume) release(ctx context.Context, who [16]byte) {
	if !v.state.CompareAndSwap(stateOpen, stateReleasing) {
		return
	}
	v.log.Info("another open asked for the volume: draining and releasing it; writes fail from now on", "requester", fmt.Sprintf("%x", who[:4]))
	v.wakeWaiters()
	v.ops.Lock()
	//lint:ignore SA2001 taking the lock waited for in-flight I/O to finish
	v.ops.Unlock()
	v.drainMu.Lock()
	v.closing, v.dirty = true, true
	v.drainMu.Unlock()
	err := v.drain(ctx)
	if err != nil {
		v.drainMu.Lock()
		v.closing = false
		v.drainMu.Unlock()
		if v.state.CompareAndSwap(stateReleasing, stateOpen) {
			v.log.Warn("could not drain to release the volume; serving on", "err", err)
		}
		return
	}
	v.giveUpLease(ctx)
	rerr := fmt.Errorf("%w: %s: released to another open", ErrFenced, v.name)
	v.lastErr.Store(&rerr)
	v.released.Store(true)
	v.state.CompareAndSwap(stateReleasing, stateReleased)
	v.wakeWaiters()
	v.log.Info("volume released to another open")
}

// newNonce returns a random owner nonce.
func newNonce() ([16]byte, error) {
	var n [16]byte
	_, err := rand.Read(n[:])
	return n, err
}
