package nbdkit

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/internal/testutil"
)

func memory(sock string) Config {
	return Config{Plugin: "memory", Params: []string{"size=1M"}, Socket: sock, Ready: time.Minute}
}

// keeperConfig serves the memory plugin under the keeper, with its files
// in dir.
func keeperConfig(dir string) Config {
	c := memory(filepath.Join(dir, "s.sock"))
	c.Pidfile, c.Status, c.LogFile = filepath.Join(dir, "pid"), filepath.Join(dir, "status"), filepath.Join(dir, "log")
	return c
}

func stopAtEnd(t *testing.T, s *Server) {
	t.Cleanup(func() {
		s.Kill()
		<-s.Done()
	})
}

func TestStartStop(t *testing.T) {
	testutil.NeedCommands(t, "nbdkit")
	sock := filepath.Join(t.TempDir(), "s")
	ctx := context.Background()
	s, err := Start(ctx, memory(sock))
	if err != nil {
		t.Fatal(err)
	}
	stopAtEnd(t, s)
	if st, err := os.Stat(sock); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("socket: %v %v", st, err)
	}
	if !strings.Contains(s.URI(), sock) || s.Adopted() || s.Pid() <= 0 {
		t.Fatal(s.URI(), s.Adopted(), s.Pid())
	}
	// A second server on a live socket is refused.
	if _, err := Start(ctx, memory(sock)); err == nil || !strings.Contains(err.Error(), "already listening") {
		t.Fatalf("second server on a live socket: %v", err)
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := s.Stop(sctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left behind: %v", err)
	}
	// The probes (readiness, and the check for a server already
	// listening) end the handshake as a client should: nbdkit logged no
	// client gone mid-handshake.
	if out := s.Output(); strings.Contains(out, "error") {
		t.Fatalf("nbdkit logged an error about the probes: %s", out)
	}
}

func TestStaleSocketAndKill(t *testing.T) {
	testutil.NeedCommands(t, "nbdkit")
	sock := filepath.Join(t.TempDir(), "s")
	s, err := Start(context.Background(), memory(sock))
	if err != nil {
		t.Fatal(err)
	}
	s.Kill()
	var ee *ExitError
	if err := s.Wait(); !errors.As(err, &ee) || ee.Status != "killed by SIGKILL" || ee.Code != 128+9 {
		t.Fatalf("Wait after kill: %v", err)
	}
	// The stale socket a kill -9 leaves behind.
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	s, err = Start(context.Background(), memory(sock))
	if err != nil {
		t.Fatal(err)
	}
	stopAtEnd(t, s)
}

func TestStartFailure(t *testing.T) {
	testutil.NeedCommands(t, "nbdkit")
	c := memory(filepath.Join(t.TempDir(), "s"))
	c.Params = []string{"size=banana"}
	_, err := Start(context.Background(), c)
	var ee *ExitError
	if !errors.Is(err, ErrExited) || !errors.As(err, &ee) || ee.Code != 1 || !strings.Contains(ee.Log, "size") {
		t.Fatalf("err = %v", err)
	}
	// The same under the keeper, with a log file.
	c = keeperConfig(t.TempDir())
	c.Params = []string{"size=banana"}
	_, err = Start(context.Background(), c)
	if !errors.Is(err, ErrExited) || !errors.As(err, &ee) || ee.Code != 1 || !strings.Contains(ee.Log, "size") || strings.Contains(ee.Log, "starting nbdkit") {
		t.Fatalf("err = %v", err)
	}
}

func TestInvalid(t *testing.T) {
	for _, c := range []Config{
		{Socket: "s"},
		{Plugin: "memory"},
		{Plugin: "memory", Socket: "s", Addr: "127.0.0.1:1"},
		{Plugin: "memory", Socket: "s", Status: "st"},
		{Plugin: "memory", Socket: "s", Wrapper: []string{"env"}},
		{Plugin: "memory", Addr: "nope"},
	} {
		if _, err := Start(context.Background(), c); !errors.Is(err, ErrInvalid) {
			t.Errorf("%+v: %v", c, err)
		}
	}
}

func TestTCP(t *testing.T) {
	testutil.NeedCommands(t, "nbdkit")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	s, err := Start(context.Background(), Config{Plugin: "memory", Params: []string{"1M"}, Addr: addr})
	if err != nil {
		t.Skipf("port taken meanwhile? %v", err)
	}
	stopAtEnd(t, s)
	if s.URI() != "nbd://"+addr {
		t.Fatal(s.URI())
	}
	if err := s.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestKeeperAdopt: a server under the keeper is adopted by another
// supervisor (a restarted caller) and stopped through it; the exit status
// comes from the keeper's file.
func TestKeeperAdopt(t *testing.T) {
	testutil.NeedCommands(t, "nbdkit")
	dir := t.TempDir()
	c := keeperConfig(dir)
	s, err := Start(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	stopAtEnd(t, s)
	a, ok, err := Adopt(c)
	if err != nil || !ok || a.Pid() != s.Pid() || !a.Adopted() {
		t.Fatalf("adopt: %v %v %v", a, ok, err)
	}
	other := c
	other.Socket += "x"
	if _, ok, _ := Adopt(other); ok {
		t.Fatal("adopted a server of another socket")
	}
	if err := a.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("the first handle did not see the exit")
	}
	if b, _ := os.ReadFile(c.Status); string(b) != "0\n" {
		t.Fatalf("status file %q", b)
	}
	// The readiness probe ends its handshake cleanly: nbdkit logs nothing.
	if b, _ := os.ReadFile(c.LogFile); strings.Contains(string(b), "error") {
		t.Fatalf("nbdkit logged an error:\n%s", b)
	}
	if _, ok, _ := Adopt(c); ok {
		t.Fatal("adopted an exited server")
	}
	// A killed server: its status says so, through either handle.
	s, err = Start(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	stopAtEnd(t, s)
	a, ok, err = Adopt(c)
	if !ok || err != nil {
		t.Fatal(ok, err)
	}
	syscall.Kill(s.Pid(), syscall.SIGKILL)
	for _, h := range []*Server{s, a} {
		var ee *ExitError
		if err := h.Wait(); !errors.As(err, &ee) || ee.Status != "killed by SIGKILL" {
			t.Fatalf("wait: %v", err)
		}
	}
}

// TestStopTimeout: Stop with an ended context returns at once, leaving
// nbdkit to exit by itself.
func TestStopTimeout(t *testing.T) {
	testutil.NeedCommands(t, "nbdkit")
	c := keeperConfig(t.TempDir())
	s, err := Start(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	stopAtEnd(t, s)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Stop(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("stop: %v", err)
	}
	<-s.Done() // SIGTERM was sent: it exits anyway
	// Done waited for the keeper too: the status is already recorded, and
	// nothing writes to the directory any more.
	if b, err := os.ReadFile(c.Status); err != nil || string(b) != "0\n" {
		t.Fatalf("status file right after Done: %q, %v", b, err)
	}
	if err := s.Wait(); err != nil {
		t.Fatalf("wait after the SIGTERM: %v", err)
	}
}

// TestPlace: the keeper is handed to Place before it starts nbdkit; a
// failing Place leaves nothing running.
func TestPlace(t *testing.T) {
	testutil.NeedCommands(t, "nbdkit")
	c := keeperConfig(t.TempDir())
	var placed int
	c.Place = func(pid int) error {
		placed = pid
		// nbdkit has not started yet: the keeper waits for us.
		if _, err := os.Stat(c.Pidfile); err == nil {
			t.Error("nbdkit started before Place returned")
		}
		return nil
	}
	s, err := Start(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	stopAtEnd(t, s)
	ppid := parentOf(t, s.Pid())
	if placed == 0 || ppid != placed {
		t.Fatalf("placed %d, nbdkit's parent %d", placed, ppid)
	}
	s.Stop(context.Background())

	c.Place = func(pid int) error {
		placed = pid
		return errors.New("no room")
	}
	if _, err := Start(context.Background(), c); err == nil || !strings.Contains(err.Error(), "no room") {
		t.Fatalf("start: %v", err)
	}
	if err := syscall.Kill(placed, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("keeper %d still exists: %v", placed, err)
	}
	if _, err := os.Stat(c.Pidfile); err == nil {
		t.Fatal("nbdkit started")
	}
}

func parentOf(t *testing.T, pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

func runCmd(name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return exec.CommandContext(ctx, name, args...).CombinedOutput()
}
