package testutil

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/hostcgroup"
)

// CgroupRoot is the cgroup file system the tests place processes in.
const CgroupRoot = hostcgroup.DefaultRoot

// Cgroup creates a cgroup named after the test and this process (capability
// "cgroup": it skips, or fails under VB_REQUIRE, unless the test runs as
// root with a writable cgroup file system at CgroupRoot). At cleanup it
// kills whatever still runs in the group and removes it.
func Cgroup(t testing.TB, label string) *hostcgroup.Group {
	t.Helper()
	NeedRoot(t)
	name := fmt.Sprintf("vbtest-%s-%d-%d", label, os.Getpid(), time.Now().UnixNano()%1e6)
	g, err := hostcgroup.Open(CgroupRoot, name)
	if err != nil {
		Skip(t, "cgroup", "needs a writable cgroup file system at %s: %v", CgroupRoot, err)
	}
	t.Cleanup(func() {
		KillCgroup(t, g)
		// A killed process leaves cgroup.procs when it starts exiting but
		// keeps the group populated until its exit completes (a FUSE
		// server tearing down its connection can take a moment), and rmdir
		// fails with EBUSY until then.
		var other error
		err := WaitFor(context.Background(), 30*time.Second, func() (bool, error) {
			err := g.Remove()
			if err != nil && !errors.Is(err, syscall.EBUSY) {
				other = err // not worth waiting for
				return true, nil
			}
			return err == nil, err
		})
		if err == nil {
			err = other
		}
		if err != nil {
			t.Errorf("removing test cgroup: %v", err)
		}
	})
	return g
}

// KillCgroup does what a container runtime does to stop a container: it
// sends SIGKILL to every process listed in the group's cgroup.procs, until
// none is left (a process may fork meanwhile). It fails the test if the
// group is not empty within 30 seconds.
func KillCgroup(t testing.TB, g *hostcgroup.Group) {
	t.Helper()
	Eventually(t, 30*time.Second, "the processes of cgroup "+g.Name()+" to die", func() (bool, error) {
		pids, err := g.Pids()
		if err != nil {
			return false, err
		}
		for _, p := range pids {
			syscall.Kill(p, syscall.SIGKILL)
		}
		return len(pids) == 0, fmt.Errorf("still running: %v", pids)
	})
}
