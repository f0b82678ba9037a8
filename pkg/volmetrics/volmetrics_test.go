package volmetrics_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/volmetrics"
)

func TestRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.sock")
	// A stale socket from an earlier server is replaced.
	old, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	old.(*net.UnixListener).SetUnlinkOnClose(false)
	old.Close()
	l, err := volmetrics.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	srv := volmetrics.Serve(l, func() volmetrics.Snapshot {
		return volmetrics.Snapshot{Volume: "v", IO: map[string]volmetrics.IO{volmetrics.OpWrite: {Ops: 2, Bytes: 8192}},
			Store: map[string]volmetrics.StoreOp{"put": {OK: 3, Retries: 1}}, Engine: volmetrics.Engine{Fenced: true}}
	})
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := volmetrics.Fetch(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if s.Version != volmetrics.Version || s.Volume != "v" || s.IO["write"].Bytes != 8192 || s.Store["put"].Retries != 1 || !s.Engine.Fenced {
		t.Fatalf("fetched %+v", s)
	}
	if _, err := volmetrics.Fetch(ctx, filepath.Join(t.TempDir(), "none.sock")); err == nil {
		t.Fatal("fetch from a missing socket succeeded")
	}
}

func TestFetchRefusesUnknownVersion(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.sock")
	l, err := volmetrics.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte(`{"version": 2, "volume": "v"}`))
	})}
	go srv.Serve(l)
	defer srv.Close()
	if _, err := volmetrics.Fetch(context.Background(), path); !errors.Is(err, volmetrics.ErrVersion) {
		t.Fatalf("version 2: %v, want ErrVersion", err)
	}
}
