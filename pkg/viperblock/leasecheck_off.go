//go:build viperblock_nolease

package viperblock

// A deliberately broken build (go build -tags viperblock_nolease): flushes
// are confirmed without a valid lease. The nemesis test uses it to show
// that it catches a stale owner confirming flushes. Never ship it.
func init() { leaseChecks = false }
