package attach

import (
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
