//go:build !linux

package viperblock

import "time"

var clockStart = time.Now()

// bootClock is the lease clock: Go's monotonic clock where CLOCK_BOOTTIME
// is not available.
func bootClock() time.Duration { return time.Since(clockStart) }
