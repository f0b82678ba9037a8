package driver

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/internal/testutil"
)

// memorySpec is a volume's spec as the node makes it (keeper, pidfile,
// status and log file in the volume's directory), serving nbdkit's memory
// plugin.
func memorySpec(t *testing.T) nbdkitSpec {
	dir := filepath.Join(t.TempDir(), "volumes", "store.vol-1")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return nbdkitSpec{Nbdkit: "nbdkit", Plugin: "memory", Socket: filepath.Join(dir, "s.sock"), Pidfile: filepath.Join(dir, "nbdkit.pid"),
		Status: filepath.Join(dir, "nbdkit.status"), LogFile: filepath.Join(dir, "nbdkit.log"), Params: []string{"size=1M"}, Ready: time.Minute}
}

func TestSupervisorStartStopAdopt(t *testing.T) {
	testutil.NeedCommands(t, "nbdkit")
	spec := memorySpec(t)
	var logs syncBuffer
	sup := NewSupervisorWith(SupervisorOptions{Logs: &logs})
	srv, err := sup.Start(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Kill(); <-srv.Done() })
	if fi, err := os.Stat(spec.Socket); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket: %v %v", fi, err)
	}
	// A second supervisor (a restarted node plugin) adopts it.
	var logs2 syncBuffer
	a, ok, err := NewSupervisorWith(SupervisorOptions{Logs: &logs2}).Adopt(spec)
	if err != nil || !ok || a.Pid() != srv.Pid() || !a.Adopted() {
		t.Fatalf("adopt: %v %v %v", a, ok, err)
	}
	// Another socket is not adopted by mistake.
	other := spec
	other.Socket += "x"
	if _, ok, _ := NewSupervisor().Adopt(other); ok {
		t.Fatal("adopted a server of another socket")
	}
	// What nbdkit logs reaches both supervisors' log writers, labelled
	// with the volume.
	f, err := os.OpenFile(spec.LogFile, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("nbdkit: a line from nbdkit\n")
	f.Close()
	for _, l := range []*syncBuffer{&logs, &logs2} {
		testutil.Eventually(t, 10*time.Second, "the forwarded log line", func() (bool, error) {
			return strings.Contains(l.String(), "nbdkit store.vol-1: nbdkit: a line from nbdkit\n"), errors.New(l.String())
		})
	}
	// Stop through the adopted handle: the exit status comes from the keeper.
	if err := a.Stop(context.Background()); err != nil {
		t.Fatalf("stop: %v", err)
	}
	select {
	case <-srv.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("the first handle did not see the exit")
	}
	if _, ok, _ := NewSupervisor().Adopt(spec); ok {
		t.Fatal("adopted an exited server")
	}
}

func TestSupervisorStartFails(t *testing.T) {
	testutil.NeedCommands(t, "nbdkit")
	spec := memorySpec(t)
	spec.Params = []string{"size=banana"}
	_, err := NewSupervisor().Start(context.Background(), spec)
	if err == nil || !strings.Contains(err.Error(), "size") || !strings.Contains(err.Error(), "exit status 1") {
		t.Fatalf("start: %v", err)
	}
}

// TestSupervisorNotOwner: nbdkit's exit status 77 (the plugin refused to
// take the volume back) is errOwnedElsewhere.
func TestSupervisorNotOwner(t *testing.T) {
	spec := memorySpec(t)
	spec.Nbdkit = filepath.Join(t.TempDir(), "nbdkit-refusing")
	if err := os.WriteFile(spec.Nbdkit, []byte("#!/bin/sh\necho 'nbdkit: error: taken over' >&2\nexit 77\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := NewSupervisor().Start(context.Background(), spec)
	if !errors.Is(err, errOwnedElsewhere) || !strings.Contains(err.Error(), "taken over") {
		t.Fatalf("start: %v", err)
	}
}

func TestServerPlacementOptions(t *testing.T) {
	if p, err := ServerPlacement(&Options{}); p != nil || err != nil {
		t.Fatalf("no --server-cgroup: %v %v", p != nil, err)
	}
	_, err := ServerPlacement(&Options{CgroupRoot: t.TempDir(), ServerCgroup: "servers"})
	if err == nil || !strings.Contains(err.Error(), "--server-cgroup=servers") {
		t.Fatalf("unusable cgroup root: %v", err)
	}
}

// syncBuffer is a Writer the test reads while forwarders write.
type syncBuffer struct {
	mu sync.Mutex // guards b
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
