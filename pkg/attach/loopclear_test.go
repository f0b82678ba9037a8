package attach

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/internal/testutil"
)

// TestLoopClearOnlyOurs: loopClear leaves alone a loop device that is
// backed by another file (a device released and taken by another
// attachment between finding it and clearing it), and detaches its own.
func TestLoopClearOnlyOurs(t *testing.T) {
	testutil.NeedRoot(t)
	testutil.NeedCommands(t, "losetup")
	testutil.NeedPath(t, "/dev/loop-control")
	dir := t.TempDir()
	mine, other := filepath.Join(dir, "mine"), filepath.Join(dir, "other")
	for _, f := range []string{mine, other} {
		if err := os.WriteFile(f, make([]byte, 1<<20), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	out, err := exec.Command("losetup", "--find", "--show", other).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { loopClear(dev, other) }) // only if still ours
	if err := loopClear(dev, mine); err != nil {
		t.Fatal(err)
	}
	if got := loopsOf(other); len(got) != 1 || got[0] != dev {
		t.Fatalf("clearing %s as if it were %s's detached another file's device: loops of %s = %v", dev, mine, other, got)
	}
	if err := loopClear(dev, other); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 30*time.Second, "the device to detach", func() (bool, error) { return len(loopsOf(other)) == 0, nil })
	if err := loopClear(dev, other); err != nil {
		t.Fatalf("clearing an unbound device: %v", err)
	}
}

// TestLoopsOfSamePathOtherFile: a loop device backed by a file at the same
// path in another mount namespace (two nodes on one kernel) is not counted
// as this namespace's file's, so it is neither reported busy nor cleared
// for it.
func TestLoopsOfSamePathOtherFile(t *testing.T) {
	testutil.NeedRoot(t)
	testutil.NeedCommands(t, "losetup", "unshare")
	testutil.NeedPath(t, "/dev/loop-control")
	dir := t.TempDir()
	f := filepath.Join(dir, "disk")
	// Another mount namespace: a tmpfs over dir, a file at the same path
	// there, a loop device on it; the namespace lives until release closes.
	// Absolute paths: a busybox sh may prefer its own applets, and
	// busybox losetup has no --find --show.
	losetup, err := exec.LookPath("losetup")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("unshare", "-m", "sh", "-c",
		`mount -t tmpfs none "$1" && : >"$1/disk" && "$2" --find --show "$1/disk" && read x`, "-", dir, losetup)
	cmd.Stderr = os.Stderr
	release, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var dev string
	if _, err := fmt.Fscanln(stdout, &dev); err != nil || !strings.HasPrefix(dev, "/dev/loop") {
		t.Fatalf("the other namespace's loop device: %q, %v", dev, err)
	}
	t.Cleanup(func() {
		release.Close()
		cmd.Wait()
		exec.Command("losetup", "-d", dev).Run()
	})
	if back, _ := readSysfs(filepath.Join(sysBlock(dev), "loop", "backing_file")); back != f {
		t.Skipf("this kernel shows the other namespace's file as %q, not %q: nothing to tell apart", back, f)
	}
	if err := os.WriteFile(f, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := loopsOf(f); len(got) != 0 {
		t.Fatalf("loops of %s = %v: %s is backed by the other namespace's file at that path", f, got, dev)
	}
	if err := loopClear(dev, f); err != nil {
		t.Fatal(err)
	}
	if back, _ := readSysfs(filepath.Join(sysBlock(dev), "loop", "backing_file")); back != f {
		t.Fatalf("clearing for %s detached the other namespace's device %s", f, dev)
	}
}
