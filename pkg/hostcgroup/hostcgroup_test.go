package hostcgroup_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/viperblock/viperblock-csi/internal/testutil"
	"github.com/viperblock/viperblock-csi/pkg/hostcgroup"
)

func TestValidName(t *testing.T) {
	for _, n := range []string{"", ".", "..", "a/b", "../x", "a b", strings.Repeat("x", 201)} {
		if err := hostcgroup.ValidName(n); !errors.Is(err, hostcgroup.ErrInvalid) {
			t.Errorf("%q: %v", n, err)
		}
	}
	for _, n := range []string{"viperblock-servers", "vb.servers_1"} {
		if err := hostcgroup.ValidName(n); err != nil {
			t.Errorf("%q: %v", n, err)
		}
	}
}

func TestOpenNoHierarchy(t *testing.T) {
	dir := t.TempDir()
	os.Mkdir(filepath.Join(dir, "notacgroup"), 0o755)
	_, err := hostcgroup.Open(dir, "x")
	if !errors.Is(err, hostcgroup.ErrInvalid) || !strings.Contains(err.Error(), dir) {
		t.Fatalf("err = %v", err)
	}
	_, err = hostcgroup.Open(filepath.Join(dir, "missing"), "x")
	if err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("err = %v", err)
	}
}

// cgroupsOf parses /proc/PID/cgroup: hierarchy line -> path.
func cgroupsOf(t *testing.T, pid int) []string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

// TestPlaceReal moves a process, and a child it forks afterwards, into a
// test cgroup of this machine's cgroup file system.
func TestPlaceReal(t *testing.T) {
	g := testutil.Cgroup(t, "place")
	// The shell waits for a line on stdin, then forks a sleep and reports
	// its pid: the fork happens after the move.
	cmd := exec.Command("/bin/sh", "-c", `read -r _; sleep 60 & echo $!; wait`)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	if err := g.Place(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	// Placing twice is harmless.
	if err := g.Place(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	in.Write([]byte("go\n"))
	buf := make([]byte, 32)
	n, err := out.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	child, err := strconv.Atoi(strings.TrimSpace(string(buf[:n])))
	if err != nil {
		t.Fatalf("child pid %q", buf[:n])
	}
	for _, pid := range []int{cmd.Process.Pid, child} {
		for _, l := range cgroupsOf(t, pid) {
			if !strings.HasSuffix(l, ":/"+g.Name()) {
				t.Errorf("pid %d: %s is not in the group", pid, l)
			}
		}
	}
	pids, err := g.Pids()
	if err != nil || len(pids) != 2 {
		t.Fatalf("pids %v %v, want %d and %d", pids, err, cmd.Process.Pid, child)
	}
	if len(g.Dirs()) == 0 {
		t.Fatal("no directories")
	}
	// A group in use cannot be removed.
	if err := g.Remove(); err == nil {
		t.Fatal("removed a group with processes")
	}
	testutil.KillCgroup(t, g)
}

func TestPlaceBadPid(t *testing.T) {
	g := testutil.Cgroup(t, "badpid")
	err := g.Place(1 << 30)
	if err == nil || !strings.Contains(err.Error(), "cgroup.procs") {
		t.Fatalf("err = %v", err)
	}
}
