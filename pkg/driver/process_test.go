package driver

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeNbdkit is a stand-in for nbdkit -f: it "serves" (creates the socket
// path and writes its pidfile) and exits 3 on SIGTERM; with FAIL set it
// exits 1 at once with a message.
const fakeNbdkit = `#!/bin/sh
while [ $# -gt 0 ]; do
  case "$1" in
    --unix) sock="$2"; shift ;;
    --pidfile) pidfile="$2"; shift ;;
  esac
  shift
done
if [ -n "$FAIL" ]; then echo "nbdkit: error: $FAIL" >&2; exit 1; fi
trap 'echo draining; exit 3' TERM
touch "$sock"
echo $$ > "$pidfile"
while :; do sleep 0.05; done
`

func fakeSpec(t *testing.T) nbdkitSpec {
	dir := t.TempDir()
	bin := filepath.Join(dir, "nbdkit-fake")
	if err := os.WriteFile(bin, []byte(fakeNbdkit), 0o755); err != nil {
		t.Fatal(err)
	}
	return nbdkitSpec{Nbdkit: bin, Plugin: "plugin.so", Socket: filepath.Join(dir, "s.sock"), Pidfile: filepath.Join(dir, "pid"),
		Status: filepath.Join(dir, "status"), LogFile: filepath.Join(dir, "log"), Params: []string{"volume=v"}, Ready: 10 * time.Second}
}

func TestSupervisorStartStopAdopt(t *testing.T) {
	spec := fakeSpec(t)
	sup := NewSupervisor()
	srv, err := sup.Start(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(spec.Socket); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket: %v %v", fi, err)
	}
	// A second supervisor (a restarted node plugin) adopts it.
	a, ok, err := NewSupervisor().Adopt(spec)
	if err != nil || !ok || a.Pid() != srv.Pid() || !a.Adopted() {
		t.Fatalf("adopt: %v %v %v", a, ok, err)
	}
	// Another socket is not adopted by mistake.
	other := spec
	other.Socket += "x"
	if _, ok, _ := NewSupervisor().Adopt(other); ok {
		t.Fatal("adopted a server of another socket")
	}
	// Stop through the adopted handle: the exit status comes from the keeper.
	err = a.Stop(context.Background())
	if err == nil || !strings.Contains(err.Error(), "exit status 3") || !strings.Contains(err.Error(), "draining") {
		t.Fatalf("stop: %v", err)
	}
	select {
	case <-srv.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("the first handle did not see the exit")
	}
	if _, ok, _ := NewSupervisor().Adopt(spec); ok {
		t.Fatal("adopted an exited server")
	}
}

func TestSupervisorStartFails(t *testing.T) {
	spec := fakeSpec(t)
	spec.Env = []string{"FAIL=cannot open volume"}
	_, err := NewSupervisor().Start(context.Background(), spec)
	if err == nil || !strings.Contains(err.Error(), "cannot open volume") || !strings.Contains(err.Error(), "exit status 1") {
		t.Fatalf("start: %v", err)
	}
}

func TestSupervisorStopTimeout(t *testing.T) {
	spec := fakeSpec(t)
	srv, err := NewSupervisor().Start(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := srv.Stop(ctx); err == nil {
		t.Fatal("stop with an expired context waited")
	}
	<-srv.Done() // SIGTERM was sent: it exits anyway
}
