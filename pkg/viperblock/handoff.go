package viperblock

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/manifest"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/wal"
)

// # Standby opens and the handoff (live migration)
//
// A live migration runs a volume's user on two nodes for a while: the
// source keeps writing while the target starts and waits, and at
// switch-over the source stops and the target goes on. The volume keeps a
// single owner throughout. The target opens it as a Standby (OpenStandby):
// it reads the manifest but takes no lease, no epoch and no WAL, and serves
// no writes. A write (or trim, or zero) on it calls Handoff first, which
// takes the volume over:
//
//  1. The standby writes the handoff object (below) in state "take", and
//     rewrites it every handoffRefresh while it waits, so the owner can
//     tell a live request from one left behind.
//  2. The owner, which watches the object closely while a standby exists,
//     answers a "take" it saw being written (a version it had not seen
//     before, read while watching; never the version it found when it
//     started watching) as it answers a release request (lease.go): writes
//     fail from then on, everything is drained and committed with the
//     volume marked closed, and the lease is rewritten as released.
//  3. The standby's writable open (the ordinary Open path) finds the lease
//     released, takes it, bumps the epoch and becomes the owner. The old
//     owner is left released: its writes and reads fail (ErrFenced).
//
// The pause at switch-over is the owner's notice (handoffPoll), its drain
// of what the store does not hold yet, and the taker's epoch bump.
// Options.HandoffTimeout bounds the wait for a live owner (one that renews
// its lease): past it, Handoff fails with ErrInUse and the volume stays on
// the owner (a later Handoff retries). An owner that stopped renewing (its
// node died mid-migration) is waited for until its lease expires, 1.2
// lease durations after the standby first saw it unchanged, and the
// standby then takes over whatever the store holds: with store durability
// every flushed write (the dead owner's store log is adopted, storelog.go);
// with node durability what the dead owner had uploaded, its flushed but
// unuploaded writes being only in its node's WAL.
//
// A standby that dies leaves its object behind. The owner stops watching
// an object that stays unchanged for its validity, and never answers a
// "take" it did not see written, so a left-behind request never makes it
// release. Close removes the object.
//
// While it watches a standby, the owner also drains what it has pending
// every handoffKick, so that little is left to drain at switch-over.
//
// Reads on a standby (ReadAt, Extents) do not hand over: a node reads a
// block device as soon as it appears (the kernel's partition scan, udev's
// probes), long before a migration switches over, and taking the volume
// then would fail the source's writes. Instead a read asks the owner to
// commit: the standby writes the handoff object in state "sync" with a
// request id (its counter) and waits until the manifest's request field
// reaches that id (or the volume is no longer open anywhere); the owner,
// watching, answers a "sync" it sees by draining everything it holds and
// committing with that id, as it answers a drain request (request.go).
// The read is then served from that committed state. So a read on a
// standby returns every write the owner had acknowledged when the read
// began, flushed or not: never stale data. (A read before switch-over may
// be overtaken by the source's later writes, as any read of a disk in use
// is; the guest does no I/O on the target before switch-over.) An owner
// that does not answer within HandoffTimeout is taken over by a handoff
// instead (it may be dead), and the read is served by the new owner.
// Flush on a standby has nothing of its own to make durable.
//
// <volume>/handoff (version 1, 64 bytes, little-endian), written by the
// standby only (plain Put; one standby at a time):
//
//	offset  size  field
//	0       8     magic "VBHANDO1"
//	8       2     format version (1)
//	10      2     state: 1 standby (waiting: the owner watches), 2 take
//	              (hand the volume over now), 3 sync (commit everything
//	              with the counter as the request id)
//	12      4     reserved, zero
//	16      16    the standby's nonce (random per OpenStandby)
//	32      8     time of the write (Unix ns, the standby's wall clock;
//	              informational)
//	40      8     validity in nanoseconds: the owner stops watching an
//	              object it has seen unchanged this long by its own clock
//	48      8     counter: increases with every write, so no two writes
//	              encode alike; at least the write's Unix ns time, so in
//	              state sync it is a request id above any earlier one
//	56      4     reserved, zero
//	60      4     CRC32C of bytes [0, 60)
const (
	// DefaultHandoffTimeout is Options.HandoffTimeout's default.
	DefaultHandoffTimeout = 10 * time.Second

	handoffMagic = "VBHANDO1"
	handoffLen   = 64

	handoffStandby uint16 = 1
	handoffTake    uint16 = 2
	handoffSync    uint16 = 3

	// handoffPoll is how often a watching owner reads the handoff object,
	// and how often a taker reads the lease.
	handoffPoll = 20 * time.Millisecond
	// handoffRefresh is how often a taker rewrites its "take".
	handoffRefresh = 50 * time.Millisecond
	// handoffKick is how often a watching owner drains what is pending.
	handoffKick = time.Second
)

func handoffKey(vol string) string { return vol + "/handoff" }

type handoffRecord struct {
	state    uint16
	nonce    [16]byte
	at       int64
	validity time.Duration
	counter  uint64
}

func (h handoffRecord) encode() []byte {
	b := make([]byte, 0, handoffLen)
	b = append(b, handoffMagic...)
	b = binary.LittleEndian.AppendUint16(b, 1)
	b = binary.LittleEndian.AppendUint16(b, h.state)
	b = append(b, 0, 0, 0, 0)
	b = append(b, h.nonce[:]...)
	b = binary.LittleEndian.AppendUint64(b, uint64(h.at))
	b = binary.LittleEndian.AppendUint64(b, uint64(h.validity))
	b = binary.LittleEndian.AppendUint64(b, h.counter)
	b = append(b, 0, 0, 0, 0)
	return binary.LittleEndian.AppendUint32(b, wal.CRC(b))
}

func decodeHandoff(b []byte) (handoffRecord, error) {
	var h handoffRecord
	if len(b) != handoffLen || string(b[:8]) != handoffMagic {
		return h, fmt.Errorf("%w: handoff object malformed (%d bytes)", ErrCorrupt, len(b))
	}
	if binary.LittleEndian.Uint32(b[60:]) != wal.CRC(b[:60]) {
		return h, fmt.Errorf("%w: handoff object CRC mismatch", ErrCorrupt)
	}
	if v := binary.LittleEndian.Uint16(b[8:]); v != 1 {
		return h, fmt.Errorf("%w: handoff object version %d", ErrCorrupt, v)
	}
	h.state = binary.LittleEndian.Uint16(b[10:])
	if h.state < handoffStandby || h.state > handoffSync {
		return h, fmt.Errorf("%w: handoff object state %d", ErrCorrupt, h.state)
	}
	copy(h.nonce[:], b[16:32])
	h.at = int64(binary.LittleEndian.Uint64(b[32:]))
	h.validity = time.Duration(binary.LittleEndian.Uint64(b[40:]))
	h.counter = binary.LittleEndian.Uint64(b[48:])
	if h.validity < MinLeaseDuration || h.validity > time.Hour {
		return h, fmt.Errorf("%w: handoff validity %s out of range", ErrCorrupt, h.validity)
	}
	return h, nil
}

// Standby is a volume opened to be taken over from its owner (see above).
type Standby struct {
	store backend.Store
	name  string
	opts  Options
	log   *slog.Logger
	nonce [16]byte
	size  int64

	mu      sync.Mutex // serializes Start, Handoff and Close
	state   int        // standbyWaiting, standbyDone, standbyClosed
	started bool

	wmu     sync.Mutex // serializes writes of the handoff object
	counter uint64
	st      uint16 // the state the writer goroutine writes

	rmu     sync.Mutex // serializes syncs; guards view
	view    *Volume    // read-only view of the last committed state synced to
	viewVer backend.Version

	stop chan struct{} // stops the writer goroutine
	wg   sync.WaitGroup
}

const (
	standbyWaiting = iota
	standbyDone
	standbyClosed
)

// ErrHandedOff: Handoff was called on a Standby that already handed off.
var ErrHandedOff = errors.New("viperblock: the standby has already taken the volume over")

// OpenStandby opens a volume in standby (see above). opts are those the
// writable open that Handoff makes will use: WALDir is required. It
// starts announcing the standby to the owner unless
// Options.DeferBackground is set (then Start does).
func OpenStandby(ctx context.Context, store backend.Store, name string, opts Options) (*Standby, error) {
	opts.setDefaults(store)
	if opts.ReadOnly || opts.ResumeOnly {
		return nil, fmt.Errorf("%w: a standby open is writable once handed over: not read-only nor resume-only", ErrInvalidArg)
	}
	if opts.WALDir == "" {
		return nil, ErrNeedsWALDir
	}
	if opts.LeaseDuration < MinLeaseDuration || opts.LeaseDuration > time.Hour {
		return nil, fmt.Errorf("%w: lease duration %s: must be between %s and 1h", ErrInvalidArg, opts.LeaseDuration, MinLeaseDuration)
	}
	m, _, err := readLiveManifest(ctx, store, name)
	if err != nil {
		return nil, err
	}
	// The key first, as Open checks it: nothing is announced without it.
	if _, err := unlock(ctx, m, opts.Keys); err != nil {
		return nil, err
	}
	nonce, err := newNonce()
	if err != nil {
		return nil, err
	}
	s := &Standby{store: store, name: name, opts: opts, log: opts.Logger.With("volume", name), nonce: nonce, size: m.Size}
	if !opts.DeferBackground {
		s.Start()
	}
	return s, nil
}

// Name is the volume's name.
func (s *Standby) Name() string { return s.name }

// Size is the volume's size when the standby opened.
func (s *Standby) Size() int64 { return s.size }

// Start announces the standby to the owner (the handoff object in state
// "standby", rewritten every quarter of the lease duration) so that it
// watches for the handoff closely. Idempotent.
func (s *Standby) Start() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started || s.state != standbyWaiting {
		return
	}
	s.started = true
	s.run(handoffStandby, s.opts.LeaseDuration/4)
}

// run starts the writer goroutine: it writes the handoff object in state
// st at once and then every period, until stopWriter. s.mu is held.
func (s *Standby) run(st uint16, period time.Duration) {
	s.wmu.Lock()
	s.st = st
	s.wmu.Unlock()
	s.stop = make(chan struct{})
	stop := s.stop
	first := make(chan struct{})
	s.wg.Add(1)
	go func(first chan struct{}) {
		defer s.wg.Done()
		t := time.NewTicker(period)
		defer t.Stop()
		for {
			ctx, cancel := context.WithTimeout(context.Background(), max(period, time.Second))
			_, err := s.write(ctx, 0)
			cancel()
			if err != nil {
				s.log.Warn("could not write the handoff object", "err", err)
			}
			if first != nil {
				close(first)
				first = nil
			}
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}(first)
	<-first
}

// stopWriter stops the writer goroutine. s.mu is held.
func (s *Standby) stopWriter() {
	if s.stop != nil {
		close(s.stop)
		s.wg.Wait()
		s.stop = nil
	}
}

// write writes the handoff object in state st (0: the writer's state)
// and returns the counter it wrote.
func (s *Standby) write(ctx context.Context, st uint16) (uint64, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if st == 0 {
		st = s.st
	}
	now := time.Now().UnixNano()
	s.counter = max(s.counter+1, uint64(now))
	h := handoffRecord{state: st, nonce: s.nonce, at: now, validity: s.opts.LeaseDuration, counter: s.counter}
	return s.counter, s.store.Put(ctx, handoffKey(s.name), h.encode())
}

// removeObject deletes the handoff object if it is still this standby's.
func (s *Standby) removeObject(ctx context.Context) {
	b, _, err := s.store.Get(ctx, handoffKey(s.name))
	if err != nil {
		return
	}
	if h, err := decodeHandoff(b); err == nil && h.nonce != s.nonce {
		return // another standby's now
	}
	if err := s.store.Delete(ctx, handoffKey(s.name)); err != nil && !errors.Is(err, backend.ErrNotFound) {
		s.log.Warn("could not remove the handoff object (the owner ignores it once it stops changing)", "err", err)
	}
}

// Handoff takes the volume over from its owner (see above) and returns it
// open for writing, started. On failure (ErrInUse: a live owner did not
// hand over within Options.HandoffTimeout; or the open's own errors) the
// volume stays with its owner and the Standby stays a standby: Handoff may
// be called again. After a success the Standby is spent (Close only
// releases nothing more).
func (s *Standby) Handoff(ctx context.Context) (*Volume, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch s.state {
	case standbyClosed:
		return nil, ErrClosed
	case standbyDone:
		return nil, ErrHandedOff
	}
	start := time.Now()
	s.stopWriter()
	s.run(handoffTake, handoffRefresh)
	opts := s.opts
	opts.handoff = true
	opts.DeferBackground = false
	v, err := Open(ctx, s.store, s.name, opts)
	s.stopWriter()
	if err != nil {
		if s.started {
			s.run(handoffStandby, s.opts.LeaseDuration/4)
		} else {
			s.removeObject(context.WithoutCancel(ctx))
		}
		return nil, fmt.Errorf("viperblock: hand %s over to this standby: %w", s.name, err)
	}
	s.state = standbyDone
	s.dropView()
	s.removeObject(context.WithoutCancel(ctx))
	s.log.Info("took the volume over from its owner (handoff)", "epoch", v.Epoch(), "took", time.Since(start).Round(time.Millisecond))
	return v, nil
}

// Close ends a standby that was not handed over: it stops announcing it
// and removes its handoff object. The owner keeps the volume.
func (s *Standby) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state != standbyWaiting {
		s.state = max(s.state, standbyClosed)
		return nil
	}
	s.state = standbyClosed
	s.stopWriter()
	s.dropView()
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.LeaseDuration)
	defer cancel()
	s.removeObject(ctx)
	return nil
}

// pollHandoff, on the owner, starts watching the handoff object closely
// when a standby has written one (see above). The leaseLoop calls it.
func (v *Volume) pollHandoff() {
	l := &v.lease
	if l.watching.Load() || v.state.Load() != stateOpen {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), v.opts.LeaseDuration/4)
	defer cancel()
	b, ver, err := v.store.Get(ctx, handoffKey(v.name))
	if err != nil {
		if !errors.Is(err, backend.ErrNotFound) {
			v.log.Warn("could not read the handoff object", "err", err)
		}
		return
	}
	if ver == l.deadHand {
		return
	}
	h, err := decodeHandoff(b)
	if err != nil {
		v.log.Warn("ignoring a malformed handoff object", "err", err)
		l.deadHand = ver
		return
	}
	l.watching.Store(true)
	l.done.Add(1)
	go v.watchHandoff(ver, h)
}

// watchHandoff reads the handoff object every handoffPoll and answers a
// "take" written while it watches by releasing the volume. It stops when
// the object is gone or stays unchanged for its validity, or when the
// volume stops being open.
func (v *Volume) watchHandoff(ver backend.Version, h handoffRecord) {
	l := &v.lease
	defer l.done.Done()
	defer l.watching.Store(false)
	v.log.Info("a standby waits to take this volume over (live migration); watching for its handoff",
		"standby", fmt.Sprintf("%x", h.nonce[:4]))
	if h.state == handoffSync {
		v.answerSync(h.counter)
	}
	seenAt, kicked := v.now(), v.now()
	t := time.NewTicker(handoffPoll)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		if v.state.Load() != stateOpen {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), v.opts.LeaseDuration/4)
		b, nver, err := v.store.Get(ctx, handoffKey(v.name))
		cancel()
		switch {
		case errors.Is(err, backend.ErrNotFound):
			v.log.Info("the standby is gone; this open keeps the volume")
			return
		case err != nil:
		case nver != ver:
			nh, derr := decodeHandoff(b)
			if derr != nil {
				v.log.Warn("ignoring a malformed handoff object", "err", derr)
				l.deadHand = nver
				return
			}
			ver, h, seenAt = nver, nh, v.now()
			switch h.state {
			case handoffTake:
				rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Minute)
				v.release(rctx, h.nonce)
				rcancel()
				return
			case handoffSync:
				v.answerSync(h.counter)
			}
		}
		if v.now()-seenAt >= h.validity {
			v.log.Info("the standby stopped announcing itself; this open keeps the volume", "standby", fmt.Sprintf("%x", h.nonce[:4]))
			l.deadHand = ver
			return
		}
		if v.now()-kicked >= handoffKick {
			kicked = v.now()
			if v.pending.Load() > 0 {
				v.kickDrain()
			}
		}
	}
}

// answerSync drains everything and commits with request id at least id
// (see above). A failure is logged; the standby asks again or hands over.
func (v *Volume) answerSync(id uint64) {
	v.drainMu.Lock()
	if id > v.man.Request && id > v.request {
		v.request = id
		v.dirty = true
	}
	v.drainMu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := v.drain(ctx); err != nil {
		v.log.Warn("could not commit for the standby's read", "err", err)
	}
}

// ReadAt reads from the state the owner committed for this read (see
// above), or, if the owner does not answer, from this standby's own
// handoff: then the returned Volume is not nil and owns the volume, and
// the caller uses it from now on.
func (s *Standby) ReadAt(ctx context.Context, p []byte, off int64) (int, *Volume, error) {
	view, err := s.sync(ctx)
	if err != nil {
		return 0, nil, err
	}
	if view != nil {
		n, err := view.ReadAt(p, off)
		return n, nil, err
	}
	v, err := s.Handoff(ctx)
	if err != nil {
		return 0, nil, err
	}
	n, err := v.ReadAt(p, off)
	return n, v, err
}

// Extents is Volume.Extents on the state ReadAt would read.
func (s *Standby) Extents(ctx context.Context, off, length int64) ([]Extent, *Volume, error) {
	view, err := s.sync(ctx)
	if err != nil {
		return nil, nil, err
	}
	if view != nil {
		ext, err := view.Extents(off, length)
		return ext, nil, err
	}
	v, err := s.Handoff(ctx)
	if err != nil {
		return nil, nil, err
	}
	ext, err := v.Extents(off, length)
	return ext, v, err
}

// sync asks the owner to commit and returns a read-only view of the
// committed state that answers it; nil (and no error) when the owner did
// not answer within HandoffTimeout.
func (s *Standby) sync(ctx context.Context) (*Volume, error) {
	s.mu.Lock()
	st := s.state
	s.mu.Unlock()
	switch st {
	case standbyClosed:
		return nil, ErrClosed
	case standbyDone:
		return nil, ErrHandedOff
	}
	s.rmu.Lock()
	defer s.rmu.Unlock()
	deadline := time.Now().Add(s.opts.HandoffTimeout)
	var id uint64
	var asked time.Time
	for {
		m, ver, err := readLiveManifest(ctx, s.store, s.name)
		if err != nil {
			return nil, err
		}
		if m.Flags&manifest.FlagOpen == 0 || (id != 0 && m.Request >= id) {
			if s.view == nil || ver != s.viewVer {
				o := s.opts
				o.ReadOnly = true
				kr, err := unlock(ctx, m, o.Keys)
				if err != nil {
					return nil, err
				}
				s.view, s.viewVer = newVolume(s.store, s.name, m, ver, o), ver
				s.view.keys = kr
			}
			return s.view, nil
		}
		if time.Since(asked) >= handoffRefresh {
			n, err := s.write(ctx, handoffSync)
			if err != nil {
				return nil, fmt.Errorf("viperblock: ask the owner of %s to commit: %w", s.name, err)
			}
			if id == 0 {
				id = n
			}
			asked = time.Now()
		}
		if time.Now().After(deadline) {
			s.log.Warn("the owner did not commit for a read on the standby in time; taking the volume over", "wait", s.opts.HandoffTimeout)
			return nil, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(handoffPoll):
		}
	}
}

// dropView forgets the read-only view (not closed: a read may still be
// using it; a read-only view holds nothing to release). s.mu is held.
func (s *Standby) dropView() {
	s.rmu.Lock()
	s.view = nil
	s.rmu.Unlock()
}
