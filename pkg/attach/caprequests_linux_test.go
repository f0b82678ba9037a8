//go:build linux

package attach

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// capRequests lowers max_sectors_kb to the server's maximum, never raises
// it, and leaves it alone without a maximum or below a page.
func TestCapRequests(t *testing.T) {
	for _, c := range []struct {
		cur  string
		max  uint32
		want string
	}{
		{"1280", 1 << 20, "1024"},
		{"32767", 256 << 10, "256"},
		{"512", 1 << 20, "512"}, // already smaller
		{"1280", 0, "1280"},     // no maximum stated
		{"1280", 2048, "1280"},  // below a page
	} {
		dir := t.TempDir()
		p := filepath.Join(dir, "max_sectors_kb")
		if err := os.WriteFile(p, []byte(c.cur+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := capRequests(dir, c.max); err != nil {
			t.Errorf("%s KiB, max %d: %v", c.cur, c.max, err)
		}
		if got, _ := readSysfs(p); got != c.want {
			t.Errorf("%s KiB, max %d: max_sectors_kb %s, want %s", c.cur, c.max, got, c.want)
		}
	}
	if err := capRequests(t.TempDir(), 1<<20); err == nil {
		t.Error("no max_sectors_kb: no error")
	}
}

// On a real block device queue (a loop device: the kernel's NBD module is
// not needed) the kernel takes the lowered limit.
func TestCapRequestsKernel(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for losetup")
	}
	img := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "-f", "--show", img).CombinedOutput()
	if err != nil {
		t.Skipf("losetup: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	defer exec.Command("losetup", "-d", dev).Run() //nolint:errcheck // best effort
	queue := filepath.Join(sysBlock(dev), "queue")
	before, err := readSysfs(filepath.Join(queue, "max_sectors_kb"))
	if err != nil {
		t.Fatal(err)
	}
	if err := capRequests(queue, 64<<10); err != nil {
		t.Fatalf("%s (max_sectors_kb %s): %v", dev, before, err)
	}
	want := "64"
	if n, err := strconv.Atoi(before); err == nil && n < 64 {
		want = before
	}
	if got, _ := readSysfs(filepath.Join(queue, "max_sectors_kb")); got != want {
		t.Errorf("%s: max_sectors_kb %s (was %s), want %s", dev, got, before, want)
	}
	t.Logf("%s: max_sectors_kb %s -> %s", dev, before, want)
}
