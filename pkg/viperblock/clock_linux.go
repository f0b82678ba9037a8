package viperblock

import (
	"time"

	"golang.org/x/sys/unix"
)

// bootClock is the lease clock: CLOCK_BOOTTIME, monotonic and counting
// time the machine spent suspended (CLOCK_MONOTONIC does not), so a node
// resumed from suspend sees its lease expired.
func bootClock() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		panic("viperblock: clock_gettime(CLOCK_BOOTTIME): " + err.Error())
	}
	return time.Duration(ts.Nano())
}
