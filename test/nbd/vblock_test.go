package nbd

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/internal/testutil"
)

// vblock runs the vblock command (built from this checkout) with the
// harness's store.
func (h *harness) vblock(args ...string) (string, error) {
	bin := testutil.Command(h.t, "./cmd/vblock")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), "VBLOCK_STORE="+h.store, "VBLOCK_PLUGIN="+h.plugin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// serveCLI starts `vblock serve` and waits for its socket.
func (h *harness) serveCLI(name, walDir string) (*exec.Cmd, string, *syncBuffer) {
	h.t.Helper()
	sock := filepath.Join(h.dir, name+".sock")
	cmd := exec.Command(testutil.Command(h.t, "./cmd/vblock"), "serve", name, "--socket", sock, "--wal-dir", filepath.Join(h.dir, walDir))
	cmd.Env = append(os.Environ(), "VBLOCK_STORE="+h.store, "VBLOCK_PLUGIN="+h.plugin)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	testutil.Eventually(h.t, time.Minute, "vblock serve to come up", func() (bool, error) {
		return strings.Contains(out.String(), "serving volume"), fmt.Errorf("output so far:\n%s", out)
	})
	return cmd, sock, out
}

func TestVblockServe(t *testing.T) {
	needTools(t, "nbdcopy")
	h := newHarness(t)
	if out, err := h.vblock("create", "v", "--size", "64MiB"); err != nil {
		t.Fatalf("create: %v\n%s", err, out)
	}
	cmd, sock, out := h.serveCLI("v", "wal")
	if st, err := os.Stat(sock); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("socket %v %v", st, err)
	}
	// The store URL stays off nbdkit's command line.
	ps, _ := exec.Command("ps", "-o", "args=", "-C", "nbdkit").Output()
	if strings.Contains(string(ps), h.store) {
		t.Errorf("store URL on nbdkit's command line: %s", ps)
	}
	src := randomFile(t, h.dir, 8<<20, newRand(seed(t)))
	run(t, "nbdcopy", src, "nbd+unix:///?socket="+sock)
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("vblock serve after SIGTERM: %v\n%s", err, out)
	}
	if !strings.Contains(out.String(), "stopped cleanly") {
		t.Errorf("no clean-stop message:\n%s", out)
	}
	info, _ := h.vblock("inspect", "v")
	if !strings.Contains(info, "written:       8 MiB") {
		t.Errorf("inspect after serve:\n%s", info)
	}
	if out, err := h.vblock("fsck", "v"); err != nil {
		t.Errorf("fsck: %v\n%s", err, out)
	}

	// A connected client holds nbdkit after SIGTERM; a second signal kills
	// it, and vblock says so and exits non-zero.
	cmd, sock, out = h.serveCLI("v", "wal")
	c, err := dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.c.Close()
	if err := c.WriteAt([]byte("flushed"), 0, true); err != nil {
		t.Fatal(err)
	}
	cmd.Process.Signal(syscall.SIGINT)
	testutil.Eventually(t, time.Minute, "vblock serve to take the first SIGINT", func() (bool, error) {
		return strings.Contains(out.String(), "stopping nbdkit"), fmt.Errorf("output so far:\n%s", out)
	})
	cmd.Process.Signal(syscall.SIGINT)
	if err := cmd.Wait(); err == nil {
		t.Fatalf("vblock serve exited 0 after being killed:\n%s", out)
	}
	if !strings.Contains(out.String(), "killing nbdkit") {
		t.Errorf("no kill message:\n%s", out)
	}
	// The flushed write is replayed from the WAL by the next serve.
	cmd, sock, out = h.serveCLI("v", "wal")
	c, err = dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 7)
	if err := c.ReadAt(buf, 0); err != nil || string(buf) != "flushed" {
		t.Fatalf("after kill and restart: %q %v", buf, err)
	}
	c.Close()
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("final stop: %v\n%s", err, out)
	}
}

// TestLoadDirMount: vblock load-dir, then serve and mount the result.
func TestLoadDirMount(t *testing.T) {
	testutil.NeedRoot(t)
	testutil.NeedPath(t, "/dev/fuse")
	needTools(t, "nbdfuse", "fusermount3", "losetup", "mkfs.ext4")
	h := newHarness(t)
	src := filepath.Join(h.dir, "src")
	os.MkdirAll(filepath.Join(src, "docs"), 0o755)
	os.WriteFile(filepath.Join(src, "docs", "readme.txt"), []byte("files from a directory, on a volume\n"), 0o644)
	big := randomFile(t, src, 3<<20, newRand(seed(t)))
	want := sum(t, big)
	if out, err := h.vblock("load-dir", "fsvol", src); err != nil {
		t.Fatalf("load-dir: %v\n%s", err, out)
	}
	h.volume = "fsvol"
	s := h.serve("wal")
	dev := attach(t, s)
	mnt := mount(t, dev, "ext4")
	b, err := os.ReadFile(filepath.Join(mnt, "docs", "readme.txt"))
	if err != nil || string(b) != "files from a directory, on a volume\n" {
		t.Fatalf("readme: %q %v", b, err)
	}
	if got := sum(t, filepath.Join(mnt, filepath.Base(big))); got != want {
		t.Fatal("big file differs")
	}
	unmount(t, mnt)
	detach(t, dev)
	s.stop()
}

// syncBuffer is a bytes.Buffer safe for one writer and concurrent readers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
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
