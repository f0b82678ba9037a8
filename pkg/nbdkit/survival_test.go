package nbdkit

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/internal/testutil"
	"github.com/viperblock/viperblock-csi/pkg/hostcgroup"
)

// TestMain lets the test binary play the node plugin in a "container" for
// TestServerSurvivesContainer.
func TestMain(m *testing.M) {
	if os.Getenv("VB_NBDKIT_CHILD") == "1" {
		os.Exit(pluginChild())
	}
	os.Exit(m.Run())
}

// pluginChild waits until its stdin closes (its parent has put it in the
// container's cgroup by then), starts nbdkit under the keeper with the
// files in $VB_DIR, placed into the cgroup $VB_PLACE if set, reports
// "SERVING <pid>" and waits to be killed.
func pluginChild() int {
	bufio.NewReader(os.Stdin).ReadString('\n')
	c := keeperConfig(os.Getenv("VB_DIR"))
	if name := os.Getenv("VB_PLACE"); name != "" {
		g, err := hostcgroup.Open(testutil.CgroupRoot, name)
		if err != nil {
			fmt.Println("ERR", err)
			return 1
		}
		c.Place = g.Place
	}
	s, err := Start(context.Background(), c)
	if err != nil {
		fmt.Println("ERR", err)
		return 1
	}
	fmt.Println("SERVING", s.Pid())
	select {}
}

// TestServerSurvivesContainer runs a child process in a cgroup standing for
// the node plugin's container; the child starts nbdkit. Then every process
// in that cgroup is killed, as a container runtime stops a container. With
// the server placed in a cgroup of its own, nbdkit keeps serving what was
// written before, takes new writes, and a new supervisor adopts and stops
// it; without, it dies with the container.
func TestServerSurvivesContainer(t *testing.T) {
	testutil.NeedCommands(t, "nbdkit", "nbdcopy", "nbdinfo")
	for _, placed := range []bool{true, false} {
		t.Run(fmt.Sprintf("placed=%v", placed), func(t *testing.T) {
			container := testutil.Cgroup(t, "container")
			var place string
			if placed {
				place = testutil.Cgroup(t, "servers").Name()
			}
			dir := t.TempDir()
			c := keeperConfig(dir)
			child := exec.Command(os.Args[0], "-test.run=^$")
			child.Env = append(os.Environ(), "VB_NBDKIT_CHILD=1", "VB_DIR="+dir, "VB_PLACE="+place)
			child.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			in, err := child.StdinPipe()
			if err != nil {
				t.Fatal(err)
			}
			out, err := child.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := child.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- child.Wait() }()
			t.Cleanup(func() { child.Process.Kill(); <-exited })
			if err := container.Place(child.Process.Pid); err != nil {
				t.Fatal(err)
			}
			in.Close()
			line, err := bufio.NewReader(out).ReadString('\n')
			pidStr, ok := strings.CutPrefix(strings.TrimSpace(line), "SERVING ")
			if !ok {
				t.Fatalf("child: %q %v", line, err)
			}
			pid, _ := strconv.Atoi(pidStr)
			uri := "nbd+unix:///?socket=" + c.Socket

			before := randomFile(t, dir, "before")
			run(t, "nbdcopy", "--flush", before, uri)

			testutil.KillCgroup(t, container)
			select {
			case <-exited:
			case <-time.After(30 * time.Second):
				t.Fatal("the child did not die")
			}
			exited <- nil // for the cleanup

			if !placed {
				testutil.Eventually(t, 30*time.Second, "nbdkit to die with the container", func() (bool, error) {
					err := syscall.Kill(pid, 0)
					return errors.Is(err, syscall.ESRCH), err
				})
				if _, ok, _ := Adopt(c); ok {
					t.Fatal("adopted a dead server")
				}
				if b, err := exec.Command("nbdinfo", uri).CombinedOutput(); err == nil {
					t.Fatalf("nbdinfo reached a server that should be dead:\n%s", b)
				}
				return
			}
			// Still serving, with the data written before.
			back := filepath.Join(dir, "back")
			run(t, "nbdcopy", uri, back)
			sameFile(t, before, back)
			after := randomFile(t, dir, "after")
			run(t, "nbdcopy", "--flush", after, uri)
			run(t, "nbdcopy", uri, back)
			sameFile(t, after, back)
			// A new supervisor (the restarted node plugin) adopts it.
			s, ok, err := Adopt(c)
			if err != nil || !ok || s.Pid() != pid {
				t.Fatalf("adopt: ok %v, err %v, pid %d, want %d", ok, err, s.Pid(), pid)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := s.Stop(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func randomFile(t *testing.T, dir, name string) string {
	t.Helper()
	b := make([]byte, 1<<20)
	rand.Read(b)
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func sameFile(t *testing.T, a, b string) {
	t.Helper()
	x, err1 := os.ReadFile(a)
	y, err2 := os.ReadFile(b)
	if err1 != nil || err2 != nil || !bytes.Equal(x, y) {
		t.Fatalf("%s and %s differ (%v %v)", a, b, err1, err2)
	}
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if b, err := runCmd(name, args...); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, b)
	}
}
