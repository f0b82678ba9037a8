package testutil

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestWaitFor(t *testing.T) {
	n := 0
	if err := WaitFor(context.Background(), time.Minute, func() (bool, error) { n++; return n == 3, nil }); err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Fatalf("polled %d times, want 3", n)
	}
	boom := errors.New("boom")
	err := WaitFor(context.Background(), 20*time.Millisecond, func() (bool, error) { return false, boom })
	if !errors.Is(err, boom) {
		t.Fatalf("got %v, want the condition's last error", err)
	}
	err = WaitFor(context.Background(), 20*time.Millisecond, func() (bool, error) { return false, nil })
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("got %v, want ErrTimeout", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err = WaitFor(ctx, time.Minute, func() (bool, error) { return false, nil })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
}

func TestParseSeed(t *testing.T) {
	for in, want := range map[string]uint64{"0": 0, "42": 42, " 7 ": 7, "18446744073709551615": 1<<64 - 1, "-1": 1<<64 - 1} {
		got, err := ParseSeed(in)
		if err != nil || got != want {
			t.Errorf("ParseSeed(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "junk", "0x10", "1.5", "99999999999999999999"} {
		if _, err := ParseSeed(in); err == nil {
			t.Errorf("ParseSeed(%q) succeeded; want an error", in)
		}
	}
}

func TestRequired(t *testing.T) {
	t.Setenv("VB_REQUIRE", "")
	if Required("root") {
		t.Error("empty VB_REQUIRE requires root")
	}
	t.Setenv("VB_REQUIRE", "nbdkit, root")
	if !Required("root") || !Required("nbdkit") || Required("fuse") {
		t.Error("a list requires exactly its names")
	}
	t.Setenv("VB_REQUIRE", "all")
	if !Required("anything") {
		t.Error("VB_REQUIRE=all requires everything")
	}
}
