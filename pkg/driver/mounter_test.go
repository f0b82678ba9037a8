package driver

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/viperblock/viperblock-csi/internal/testutil"
)

func TestParseExtSize(t *testing.T) {
	out := "Filesystem volume name:   <none>\nBlock count:              16384\nReserved block count:     819\nBlock size:               4096\n"
	b, s, err := parseExtSize(out)
	if err != nil || b != 16384 || s != 4096 {
		t.Fatalf("parseExtSize = %d, %d, %v; want 16384, 4096", b, s, err)
	}
	for _, bad := range []string{"", "Block count: x\nBlock size: 4096\n", "Block count: 10\n"} {
		if _, _, err := parseExtSize(bad); err == nil {
			t.Errorf("parseExtSize(%q) succeeded", bad)
		}
	}
}

// TestGrowUnmounted grows a real ext4 on a loop device whose backing file
// grew, as a volume expanded while unstaged does at its next stage.
func TestGrowUnmounted(t *testing.T) {
	testutil.NeedRoot(t)
	testutil.NeedCommands(t, "losetup", "mkfs.ext4", "dumpe2fs", "e2fsck", "resize2fs", "mkfs.xfs")
	img := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 64<<20); err != nil {
		t.Fatal(err)
	}
	run := func(name string, args ...string) string {
		t.Helper()
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(string(out))
	}
	dev := run("losetup", "--find", "--show", img)
	t.Cleanup(func() {
		// By the backing file, never by name: a device detached earlier
		// may be another test's by now.
		out, _ := exec.Command("losetup", "-j", img, "-O", "NAME", "-n").Output()
		for _, d := range strings.Fields(string(out)) {
			exec.Command("losetup", "-d", d).Run()
		}
	})
	m := NewMounter()
	if err := m.GrowUnmounted(dev); err != nil {
		t.Fatalf("a device without a filesystem: %v", err)
	}
	run("mkfs.ext4", "-q", "-F", dev)
	size := func() int64 {
		b, s, err := parseExtSize(run("dumpe2fs", "-h", dev))
		if err != nil {
			t.Fatal(err)
		}
		return b * s
	}
	if err := m.GrowUnmounted(dev); err != nil {
		t.Fatalf("a filesystem that fills its device: %v", err)
	}
	if got := size(); got != 64<<20 {
		t.Fatalf("filesystem is %d bytes before growth, want %d", got, 64<<20)
	}
	if err := os.Truncate(img, 128<<20); err != nil {
		t.Fatal(err)
	}
	run("losetup", "-c", dev)
	if err := m.GrowUnmounted(dev); err != nil {
		t.Fatal(err)
	}
	if got := size(); got != 128<<20 {
		t.Fatalf("filesystem is %d bytes after growth, want %d", got, 128<<20)
	}
	run("e2fsck", "-f", "-n", dev) // still consistent
	// xfs grows only mounted: GrowUnmounted leaves it alone.
	if err := os.Truncate(img, 512<<20); err != nil { // xfs's smallest
		t.Fatal(err)
	}
	run("losetup", "-c", dev)
	run("mkfs.xfs", "-q", "-f", dev)
	if err := m.GrowUnmounted(dev); err != nil {
		t.Fatalf("xfs: %v", err)
	}
}
