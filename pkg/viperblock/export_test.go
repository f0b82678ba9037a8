package viperblock

import (
	"context"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

// ForgetForTest abandons a volume as a process crash would: nothing is
// flushed or drained, locks are released.
func ForgetForTest(v *Volume) { v.abandon() }

// PauseLeaseForTest stops a volume's lease renewals and its answers to
// release requests, as a paused or partitioned process would; its I/O
// calls keep working, as they would once such a process runs again.
func PauseLeaseForTest(v *Volume) { v.stopLease() }

// SetClockForTest replaces the lease clock of volumes opened with o.
func SetClockForTest(o *Options, clock func() time.Duration) { o.clock = clock }

// HoldLeaseForTest writes vol's lease as held, for duration d, by an open
// nobody knows (another node's, in the middle of taking the volume over).
func HoldLeaseForTest(ctx context.Context, store backend.Store, vol string, d time.Duration) error {
	nonce, err := newNonce()
	if err != nil {
		return err
	}
	return store.Put(ctx, leaseKey(vol), leaseRecord{nonce: nonce, duration: d, counter: 1}.encode())
}

// WriteHandoffForTest writes vol's handoff object as a standby nobody
// knows would, in state "take" or "standby", valid for d.
func WriteHandoffForTest(ctx context.Context, store backend.Store, vol string, take bool, d time.Duration) error {
	nonce, err := newNonce()
	if err != nil {
		return err
	}
	h := handoffRecord{state: handoffStandby, nonce: nonce, at: time.Now().UnixNano(), validity: d, counter: 1}
	if take {
		h.state = handoffTake
	}
	return store.Put(ctx, handoffKey(vol), h.encode())
}

// AbandonStandbyForTest stops a standby as a process crash would: it stops
// announcing itself and leaves its handoff object behind. With take, its
// last write is a "take", as if it died waiting for a handoff.
func AbandonStandbyForTest(s *Standby, take bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopWriter()
	if take {
		_, _ = s.write(context.Background(), handoffTake)
	}
	s.state = standbyClosed
}
