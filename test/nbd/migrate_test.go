package nbd

import (
	"bytes"
	"errors"
	"testing"
	"time"
)

// Live migration between two nbdkit servers on one store, each with its
// own WAL directory ("node A" and "node B"): B opens in standby while A
// serves; B's first write hands the volume over (A drains, commits and
// releases); A's writes and reads fail from then on; B holds everything A
// wrote. Then back to a new standby server on node A, several times.
func TestLiveMigrationHandoff(t *testing.T) {
	h := newHarness(t)
	const bs = 4096
	blk := func(tag byte) []byte { return bytes.Repeat([]byte{tag}, bs) }
	lease := "lease_duration=2s"
	src := h.serve("walA", "size=16MiB", lease, "drain_interval=1h")
	a := src.dial()
	if err := a.WriteAt(blk(1), 0, false); err != nil {
		t.Fatal(err)
	}
	if err := a.Flush(); err != nil {
		t.Fatal(err)
	}
	nodes := [2]string{"walA", "walB"}
	var pauses []time.Duration
	for trip := 1; trip <= 4; trip++ {
		to := nodes[trip%2]
		dst := h.serve(to, "standby=true", "handoff_timeout=5s", lease, "drain_interval=1h")
		b := dst.dial() // the handshake and size query do not hand over
		// The source serves on while the standby waits.
		if err := a.WriteAt(blk(byte(10+trip)), uint64(trip)*bs, false); err != nil {
			t.Fatalf("trip %d: source write while the standby waits: %v", trip, err)
		}
		if err := a.WriteAt(blk(byte(50+trip)), 100*bs, false); err != nil { // unflushed at switch-over
			t.Fatal(err)
		}
		// Reads on the standby (a node probing its new device) hand
		// nothing over and see the source's unflushed writes.
		probe := make([]byte, bs)
		if err := b.ReadAt(probe, 100*bs); err != nil {
			t.Fatalf("trip %d: read on the standby: %v", trip, err)
		}
		if !bytes.Equal(probe, blk(byte(50+trip))) {
			t.Fatalf("trip %d: a read on the standby returned stale data", trip)
		}
		if err := b.Flush(); err != nil {
			t.Fatalf("trip %d: flush on the standby: %v", trip, err)
		}
		if err := a.WriteAt(blk(byte(10+trip)), uint64(trip)*bs, true); err != nil {
			t.Fatalf("trip %d: a read on the standby stopped the source: %v", trip, err)
		}
		time.Sleep(700 * time.Millisecond) // the source notices the standby (every lease/4)
		start := time.Now()
		if err := b.WriteAt(blk(byte(100+trip)), 200*bs, false); err != nil {
			t.Fatalf("trip %d: first write on the standby (the handoff): %v", trip, err)
		}
		pauses = append(pauses, time.Since(start))
		if err := b.Flush(); err != nil {
			t.Fatal(err)
		}
		var ne *nbdError
		if err := a.WriteAt(blk(0xee), 0, false); !errors.As(err, &ne) {
			t.Fatalf("trip %d: the old source still takes writes after the handoff: %v", trip, err)
		}
		if err := a.ReadAt(make([]byte, bs), 0); !errors.As(err, &ne) {
			t.Fatalf("trip %d: the old source still serves reads after the handoff: %v", trip, err)
		}
		got := make([]byte, 201*bs)
		if err := b.ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got[:bs], blk(1)) {
			t.Fatalf("trip %d: block 0 lost", trip)
		}
		for i := 1; i <= trip; i++ {
			if !bytes.Equal(got[i*bs:(i+1)*bs], blk(byte(10+i))) {
				t.Fatalf("trip %d: block %d lost", trip, i)
			}
		}
		if !bytes.Equal(got[100*bs:101*bs], blk(byte(50+trip))) {
			t.Fatalf("trip %d: the source's unflushed write at switch-over is lost", trip)
		}
		if !bytes.Equal(got[200*bs:201*bs], blk(byte(100+trip))) {
			t.Fatalf("trip %d: the target's first write is lost", trip)
		}
		// The old source is unstaged: it exits cleanly (nothing of its
		// own is left to drain) and frees its WAL directory.
		a.Close()
		src.stop()
		src, a = dst, b
	}
	t.Logf("handoff pause (first write on the standby) per trip: %v", pauses)
	a.Close()
	src.stop()
}

// A standby that never sees I/O changes nothing: the source keeps the
// volume and its writes, and the standby exits cleanly.
func TestLiveMigrationStandbyUnused(t *testing.T) {
	h := newHarness(t)
	// Long leases: nothing here waits for one, and three seconds of
	// FUA writes must confirm the source's on a busy disk.
	src := h.serve("walA", "size=16MiB", "lease_duration=10s")
	a := src.dial()
	dst := h.serve("walB", "standby=true", "lease_duration=10s")
	b := dst.dial()
	b.Close()
	dst.stop()
	deadline := time.Now().Add(3 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		if err := a.WriteAt(bytes.Repeat([]byte{byte(i)}, 4096), 0, true); err != nil {
			t.Fatalf("the source failed a write after an unused standby: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	a.Close()
	src.stop()
}
