package viperblock

import "time"

// ForgetForTest abandons a volume as a process crash would: nothing is
// flushed or drained, locks are released.
func ForgetForTest(v *Volume) { v.abandon() }

// PauseLeaseForTest stops a volume's lease renewals and its answers to
// release requests, as a paused or partitioned process would; its I/O
// calls keep working, as they would once such a process runs again.
func PauseLeaseForTest(v *Volume) { v.stopLease() }

// SetClockForTest replaces the lease clock of volumes opened with o.
func SetClockForTest(o *Options, clock func() time.Duration) { o.clock = clock }
