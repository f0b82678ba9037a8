package viperblock

// ForgetForTest abandons a volume as a process crash would: nothing is
// flushed or drained, locks are released.
func ForgetForTest(v *Volume) { v.abandon() }
