package nbd

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/internal/testutil"
)

// TestFilesystems puts ext4 and xfs on a volume through nbdfuse and a loop
// device, writes files, unmounts, stops the server, restarts it (same WAL
// directory, then a fresh one), mounts again and compares checksums.
func TestFilesystems(t *testing.T) {
	if testing.Short() {
		t.Skip("filesystem tests are slow; skipped with -short")
	}
	testutil.NeedRoot(t)
	testutil.NeedPath(t, "/dev/fuse")
	needTools(t, "nbdfuse", "fusermount3", "losetup", "mount", "umount", "fstrim")
	for _, fs := range []struct{ name, mkfs, check string }{
		{"ext4", "mkfs.ext4", "e2fsck"},
		{"xfs", "mkfs.xfs", "xfs_repair"},
	} {
		t.Run(fs.name, func(t *testing.T) {
			needTools(t, fs.mkfs, fs.check)
			testFilesystem(t, fs.name, fs.mkfs, fs.check)
		})
	}
}

func testFilesystem(t *testing.T, fsType, mkfs, check string) {
	h := newHarness(t)
	r := newRand(seed(t))
	s := h.serve("wal-a", "size=512MiB")

	dev := attach(t, s)
	if fsType == "xfs" {
		run(t, mkfs, "-q", "-f", dev)
	} else {
		run(t, mkfs, "-q", "-F", dev)
	}
	mnt := mount(t, dev, fsType)
	// A tree of files: small and large, a few directories, an empty file.
	want := map[string]string{}
	for i := 0; i < 40; i++ {
		dir := filepath.Join(mnt, fmt.Sprintf("d%d", i%5))
		os.MkdirAll(dir, 0o755)
		n := int64(r.IntN(64 << 10))
		if i%10 == 0 {
			n = int64(4<<20 + r.IntN(8<<20))
		}
		if i == 7 {
			n = 0
		}
		src := randomFile(t, h.dir, n, r)
		dst := filepath.Join(dir, fmt.Sprintf("f%d", i))
		copyFile(t, src, dst)
		os.Remove(src)
		want[strings.TrimPrefix(dst, mnt)] = sum(t, dst)
	}
	// Delete some files (the filesystem discards their blocks).
	for _, i := range []int{3, 20} {
		p := fmt.Sprintf("/d%d/f%d", i%5, i)
		os.Remove(filepath.Join(mnt, p))
		delete(want, p)
	}
	run(t, "fstrim", "-v", mnt)
	run(t, "sync")
	unmount(t, mnt)
	detach(t, dev)
	s.stop()

	// Same WAL directory, then a fresh one: the store alone.
	for _, wal := range []string{"wal-a", "wal-b"} {
		s := h.serve(wal)
		dev := attach(t, s)
		if fsType == "xfs" {
			run(t, check, "-n", dev)
		} else {
			run(t, check, "-fn", dev)
		}
		mnt := mount(t, dev, fsType)
		got := map[string]string{}
		filepath.Walk(mnt, func(p string, info os.FileInfo, err error) error {
			if err == nil && info.Mode().IsRegular() {
				got[strings.TrimPrefix(p, mnt)] = sum(t, p)
			}
			return nil
		})
		if len(got) != len(want) {
			t.Errorf("%s: %d files, want %d: %v", wal, len(got), len(want), keys(got))
		}
		for p, w := range want {
			if got[p] != w {
				t.Errorf("%s: %s: checksum %s, want %s", wal, p, got[p], w)
			}
		}
		unmount(t, mnt)
		detach(t, dev)
		s.stop()
		if t.Failed() {
			return
		}
	}
}

// attach exposes the server as a block device: nbdfuse makes the export a
// file, losetup makes the file a device. Both are undone in t.Cleanup if
// the test does not detach.
func attach(t *testing.T, s *server) string {
	t.Helper()
	fuseDir, err := os.MkdirTemp(s.h.dir, "fuse")
	if err != nil {
		t.Fatal(err)
	}
	pidfile := filepath.Join(s.h.dir, filepath.Base(fuseDir)+".pid")
	cmd := exec.Command("nbdfuse", "-P", pidfile, filepath.Join(fuseDir, "disk"), "--unix", s.Socket())
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		exec.Command("fusermount3", "-u", "-z", fuseDir).Run()
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
		}
	})
	testutil.Eventually(t, time.Minute, "nbdfuse to write its pidfile", func() (bool, error) {
		select {
		case err := <-exited:
			t.Fatalf("nbdfuse exited: %v", err)
		default:
		}
		b, err := os.ReadFile(pidfile)
		return err == nil && len(b) > 0, err
	})
	disk := filepath.Join(fuseDir, "disk")
	out := strings.TrimSpace(run(t, "losetup", "--find", "--show", disk))
	// Detach whatever is still backed by this file, never the device by
	// name: once detach ran, the same device may be another test's.
	t.Cleanup(func() { detachBacking(disk) })
	attached[out] = fuseDir
	return out
}

var attached = map[string]string{} // loop device -> nbdfuse mountpoint

// detachBacking detaches every loop device backed by file.
func detachBacking(file string) {
	out, _ := exec.Command("losetup", "-j", file, "-O", "NAME", "-n").Output()
	for _, dev := range strings.Fields(string(out)) {
		exec.Command("losetup", "-d", dev).Run()
	}
}

func detach(t *testing.T, dev string) {
	t.Helper()
	run(t, "losetup", "-d", dev)
	fuseDir := attached[dev]
	delete(attached, dev)
	// The loop device lets go of the file asynchronously (slowly on a
	// loaded machine).
	testutil.Eventually(t, time.Minute, "fusermount3 -u "+fuseDir, func() (bool, error) {
		out, err := exec.Command("fusermount3", "-u", fuseDir).CombinedOutput()
		if err != nil {
			return false, fmt.Errorf("%v %s", err, out)
		}
		return true, nil
	})
}

func mount(t *testing.T, dev, fsType string) string {
	t.Helper()
	mnt, err := os.MkdirTemp("", "vb-mnt-")
	if err != nil {
		t.Fatal(err)
	}
	run(t, "mount", "-t", fsType, dev, mnt)
	t.Cleanup(func() {
		exec.Command("umount", mnt).Run()
		os.Remove(mnt)
	})
	return mnt
}

func unmount(t *testing.T, mnt string) {
	t.Helper()
	run(t, "umount", mnt)
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

func sum(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
