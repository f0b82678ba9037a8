//go:build !linux

package viperblock

import "time"

// processCPU is not measured here.
func processCPU() time.Duration { return 0 }
