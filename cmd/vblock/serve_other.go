//go:build !linux

package main

import (
	"context"
	"fmt"
	"runtime"
)

// runServe needs Linux: the nbdkit supervisor (pkg/nbdkit) watches its
// child through a pidfd.
func runServe(context.Context, *env, *opts, []string) error {
	return fmt.Errorf("serve runs on Linux only (not %s): serve the volume from a Linux host and connect over NBD", runtime.GOOS)
}
