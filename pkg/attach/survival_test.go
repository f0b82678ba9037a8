//go:build linux

package attach

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/viperblock/viperblock-csi/internal/testutil"
)

// TestFuseSurvivesContainer attaches from a child process standing for the
// node plugin, in a cgroup standing for its container, then kills every
// process in that cgroup as a container runtime stops a container. With
// nbdfuse placed in a cgroup of its own (Options.Place), the device keeps
// answering reads and writes (no I/O error) and a new attacher finds and
// detaches it; without, nbdfuse dies with the container and the device
// fails.
func TestFuseSurvivesContainer(t *testing.T) {
	for _, placed := range []bool{true, false} {
		t.Run(fmt.Sprintf("placed=%v", placed), func(t *testing.T) {
			ctx := context.Background()
			a, dir := newFuse(t)
			sock := startNbdkit(t, "memory", "64M")
			container := testutil.Cgroup(t, "container")
			var place string
			if placed {
				place = testutil.Cgroup(t, "servers").Name()
			}
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), "VB_ATTACH_HELPER=1", "VB_GATE=1", "VB_PLACE="+place, "VB_DIR="+dir, "VB_SOCK="+sock, "VB_ID=survivor")
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
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
			exited := make(chan struct{})
			go func() { cmd.Wait(); close(exited) }()
			t.Cleanup(func() { cmd.Process.Kill(); <-exited })
			if err := container.Place(cmd.Process.Pid); err != nil {
				t.Fatal(err)
			}
			in.Close()
			l, err := bufio.NewReader(out).ReadString('\n')
			path, ok := strings.CutPrefix(strings.TrimSpace(l), "ATTACHED ")
			if !ok {
				t.Fatalf("helper: %q %v", l, err)
			}
			st, err := a.readState("survivor")
			if err != nil || st == nil {
				t.Fatalf("state: %v", err)
			}

			testutil.KillCgroup(t, container)
			<-exited

			if !placed {
				testutil.Eventually(t, 30*time.Second, "nbdfuse to die with the container", func() (bool, error) {
					return !procAlive(st.PID, st.PIDStart), nil
				})
				if err := directIO(path, 1<<20, []byte("gone")); err == nil {
					t.Fatal("I/O on the device worked without nbdfuse")
				}
				if _, _, err := a.Find(ctx, "survivor"); !errors.Is(err, ErrStale) {
					t.Fatalf("Find: %v, want ErrStale", err)
				}
				return
			}
			if !procAlive(st.PID, st.PIDStart) {
				t.Fatal("nbdfuse died with the container")
			}
			if err := directIO(path, 1<<20, []byte("still here")); err != nil {
				t.Fatalf("I/O after the container was killed: %v", err)
			}
			// The restarted node plugin's attacher finds it and detaches it.
			dev, ok, err := a.Find(ctx, "survivor")
			if !ok || err != nil || dev.Path != path {
				t.Fatalf("Find: %+v %v %v (helper attached %s)", dev, ok, err, path)
			}
			if err := a.Detach(ctx, "survivor"); err != nil {
				t.Fatal(err)
			}
			assertClean(t, dir, "survivor")
		})
	}
}

// directIO writes msg at off on the device and reads it back, bypassing
// the page cache (O_DIRECT), so the I/O reaches nbdfuse.
func directIO(dev string, off int64, msg []byte) error {
	f, err := os.OpenFile(dev, os.O_RDWR|syscall.O_DIRECT, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := alignedBlock()
	copy(buf, msg)
	if _, err := f.WriteAt(buf, off); err != nil {
		return err
	}
	got := alignedBlock()
	if _, err := f.ReadAt(got, off); err != nil {
		return err
	}
	if !bytes.Equal(got, buf) {
		return fmt.Errorf("read back %q, want %q", got[:len(msg)], msg)
	}
	return nil
}

// alignedBlock is a 4 KiB page (aligned for O_DIRECT), filled at random.
func alignedBlock() []byte {
	b, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		panic(err)
	}
	rand.Read(b)
	return b
}
