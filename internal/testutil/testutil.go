// Package testutil holds what the project's tests share:
//
//   - [Eventually] and [WaitFor]: poll a condition until a deadline, the one
//     way tests wait for something to happen (never a bare sleep);
//   - [Skip], [NeedRoot], [NeedCommands], [NeedPath]: skips for a missing
//     capability, which the environment variable VB_REQUIRE turns into
//     failures (VB_REQUIRE=all, as CI sets it, or a comma-separated list of
//     capability names), so that no skip hides a failure;
//   - [Seed]: the seed of a random test, from VB_SEED or the clock, logged;
//   - [Plugin]: the nbdkit plugin, built from this checkout on demand.
package testutil

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Eventually calls cond until it reports true, and fails the test (with
// what and cond's last error) when timeout passes first. cond is polled at
// growing intervals, from 5 ms to 100 ms. An error from cond does not stop
// the polling: it is the reason shown if the deadline passes.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	if err := WaitFor(context.Background(), timeout, cond); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

// ErrTimeout is the error WaitFor returns when the deadline passes and cond
// never returned an error of its own.
var ErrTimeout = errors.New("testutil: condition not met before the deadline")

// WaitFor polls cond like Eventually but returns the failure instead of
// failing a test, for use outside the test goroutine. It returns nil once
// cond reports true; ctx's error if ctx ends; otherwise, after timeout, the
// last error cond returned (wrapped) or ErrTimeout.
func WaitFor(ctx context.Context, timeout time.Duration, cond func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	interval := 5 * time.Millisecond
	var last error
	for {
		ok, err := cond()
		if ok {
			return nil
		}
		if err != nil {
			last = err
		}
		if time.Now().After(deadline) {
			if last != nil {
				return fmt.Errorf("after %v: %w", timeout, last)
			}
			return fmt.Errorf("after %v: %w", timeout, ErrTimeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		}
		if interval < 100*time.Millisecond {
			interval *= 2
		}
	}
}

// Required reports whether VB_REQUIRE asks for the capability: VB_REQUIRE=all
// requires every capability; otherwise it is a comma-separated list of names.
func Required(capability string) bool {
	for _, c := range strings.Split(os.Getenv("VB_REQUIRE"), ",") {
		c = strings.TrimSpace(c)
		if c == "all" || c == capability {
			return true
		}
	}
	return false
}

// Skip skips the test because the named capability is missing (a tool, a
// device, root, a kernel module), or fails it when VB_REQUIRE requires that
// capability. Use t.Skip directly only for skips that do not depend on the
// machine (-short, a tier that runs elsewhere).
func Skip(t testing.TB, capability, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if Required(capability) {
		t.Fatalf("missing capability %q, required by VB_REQUIRE=%s: %s", capability, os.Getenv("VB_REQUIRE"), msg)
	}
	t.Skipf("%s (capability %q; VB_REQUIRE=all makes this a failure)", msg, capability)
}

// NeedRoot skips (or, under VB_REQUIRE, fails) unless the test runs as root.
func NeedRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Skip(t, "root", "needs root (loop devices, mounts, kernel interfaces)")
	}
}

// NeedCommands skips (or fails, under VB_REQUIRE) unless every command is on
// PATH. The capability is the command's name.
func NeedCommands(t testing.TB, cmds ...string) {
	t.Helper()
	for _, c := range cmds {
		if _, err := lookPath(c); err != nil {
			Skip(t, c, "%s is not installed (`make deps` installs it)", c)
		}
	}
}

// NeedPath skips (or fails, under VB_REQUIRE) unless path exists. The
// capability is the path.
func NeedPath(t testing.TB, path string) {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		Skip(t, path, "needs %s: %v", path, err)
	}
}

// Seed returns the seed for a random test: VB_SEED if set (a decimal
// uint64; anything else fails the test), otherwise one from the clock. It
// logs the seed and how to rerun with it.
func Seed(t testing.TB) uint64 {
	t.Helper()
	s := uint64(time.Now().UnixNano())
	if v, ok := os.LookupEnv("VB_SEED"); ok {
		p, err := ParseSeed(v)
		if err != nil {
			t.Fatal(err)
		}
		s = p
	}
	t.Logf("seed %d (rerun with VB_SEED=%d)", s, s)
	return s
}

// ParseSeed parses a VB_SEED value: a decimal uint64, or a negative int64
// (older logs printed signed seeds), which maps to the same bits.
func ParseSeed(v string) (uint64, error) {
	v = strings.TrimSpace(v)
	if u, err := strconv.ParseUint(v, 10, 64); err == nil {
		return u, nil
	}
	if i, err := strconv.ParseInt(v, 10, 64); err == nil {
		return uint64(i), nil
	}
	return 0, fmt.Errorf("testutil: VB_SEED=%q is not a decimal integer seed", v)
}
