package nbdserve

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/internal/testutil"
)

func needNbdkit(t *testing.T) {
	t.Helper()
	testutil.NeedCommands(t, "nbdkit")
}

func TestStartStop(t *testing.T) {
	needNbdkit(t)
	sock := filepath.Join(t.TempDir(), "s")
	ctx := context.Background()
	s, err := Start(ctx, Config{Plugin: "memory", Params: []string{"size=1M"}, Socket: sock})
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(sock)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("socket: %v %v", st, err)
	}
	if !strings.Contains(s.URI(), sock) {
		t.Fatal(s.URI())
	}
	// A second server on the same socket is refused.
	if _, err := Start(ctx, Config{Plugin: "memory", Params: []string{"size=1M"}, Socket: sock}); err == nil {
		t.Fatal("second server on a live socket started")
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := s.Stop(sctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left behind: %v", err)
	}
}

func TestStaleSocketAndKill(t *testing.T) {
	needNbdkit(t)
	sock := filepath.Join(t.TempDir(), "s")
	s, err := Start(context.Background(), Config{Plugin: "memory", Params: []string{"size=1M"}, Socket: sock})
	if err != nil {
		t.Fatal(err)
	}
	s.Kill()
	if err := s.Wait(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("Wait after kill: %v", err)
	}
	// Simulate the stale socket a kill -9 leaves behind.
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	if _, err := os.Stat(sock); err != nil {
		t.Fatal(err)
	}
	s, err = Start(context.Background(), Config{Plugin: "memory", Params: []string{"size=1M"}, Socket: sock})
	if err != nil {
		t.Fatal(err)
	}
	s.Stop(context.Background())
}

func TestStartFailure(t *testing.T) {
	needNbdkit(t)
	sock := filepath.Join(t.TempDir(), "s")
	_, err := Start(context.Background(), Config{Plugin: "memory", Params: []string{"size=banana"}, Socket: sock})
	if !errors.Is(err, ErrExited) || !strings.Contains(err.Error(), "size") {
		t.Fatalf("err = %v", err)
	}
}
