package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/internal/testutil"
	"github.com/viperblock/viperblock-csi/pkg/nbdkit"
	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

// needTools skips the test (or fails it, under VB_REQUIRE) unless every
// tool is on PATH.
func needTools(t testing.TB, tools ...string) {
	t.Helper()
	testutil.NeedCommands(t, tools...)
}

// harness is one test's volume: a file store and the plugin.
type harness struct {
	t      testing.TB
	plugin string
	dir    string
	store  string // file:// URL
	volume string
	n      atomic.Int32
}

func newHarness(t testing.TB) *harness {
	t.Helper()
	needTools(t, "nbdkit")
	plugin := testutil.Plugin(t)
	dir := t.TempDir()
	return &harness{t: t, plugin: plugin, dir: dir, store: "file://" + filepath.Join(dir, "store"), volume: "vol"}
}

// server is one running nbdkit.
type server struct {
	*nbdkit.Server
	h      *harness
	walDir string
}

// serve starts nbdkit with the plugin on a new socket, with the WAL in walDir
// (relative to the harness directory) and extra plugin parameters.
func (h *harness) serve(walDir string, params ...string) *server {
	h.t.Helper()
	s, err := h.start(walDir, nil, params...)
	if err != nil {
		h.t.Fatal(err)
	}
	return s
}

func (h *harness) start(walDir string, nbdArgs []string, params ...string) (*server, error) {
	wal := filepath.Join(h.dir, walDir)
	sock := filepath.Join(h.dir, fmt.Sprintf("nbd%d.sock", h.n.Add(1)))
	p := append([]string{"volume=" + h.volume, "wal_dir=" + wal}, params...)
	var logw bytes.Buffer
	srv, err := nbdkit.Start(context.Background(), nbdkit.Config{
		Plugin: h.plugin, Socket: sock, Params: p, Args: nbdArgs,
		Env:    []string{"VBLOCK_STORE=" + h.store},
		Output: &testLog{t: h.t, prefix: filepath.Base(sock) + ": ", buf: &logw},
		Ready:  time.Minute,
	})
	if err != nil {
		return nil, err
	}
	h.t.Cleanup(func() { srv.Kill(); <-srv.Done() })
	return &server{Server: srv, h: h, walDir: wal}, nil
}

// stop stops the server cleanly and requires a clean exit (drained).
func (s *server) stop() {
	s.h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := s.Stop(ctx); err != nil {
		s.h.t.Fatalf("nbdkit did not stop cleanly: %v", err)
	}
}

// waitWritten waits until the store's committed state of the volume maps
// at least n bytes: a server's drain loop committed what it was written.
func (h *harness) waitWritten(n int64) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // outlasts the wait below
	defer cancel()
	st, err := backend.Open(ctx, h.store)
	if err != nil {
		h.t.Fatal(err)
	}
	defer st.Close()
	testutil.Eventually(h.t, time.Minute, fmt.Sprintf("the store to show %d written bytes of %s", n, h.volume), func() (bool, error) {
		inf, err := vb.Inspect(ctx, st, h.volume)
		if err != nil {
			return false, err
		}
		return inf.WrittenBytes >= n, fmt.Errorf("%+v", inf)
	})
}

// kill9 kills nbdkit with SIGKILL and waits for it.
func (s *server) kill9() {
	s.Kill()
	<-s.Done()
}

func (s *server) dial() *client {
	s.h.t.Helper()
	c, err := dial(s.Socket())
	if err != nil {
		s.h.t.Fatal(err)
	}
	s.h.t.Cleanup(func() { c.c.Close() })
	return c
}

// testLog forwards nbdkit's stderr to the test log, line by line.
type testLog struct {
	t      testing.TB
	prefix string
	buf    *bytes.Buffer
}

func (l *testLog) Write(p []byte) (int, error) {
	l.buf.Write(p)
	for {
		i := bytes.IndexByte(l.buf.Bytes(), '\n')
		if i < 0 {
			break
		}
		line := string(l.buf.Next(i + 1))
		if testing.Verbose() {
			l.t.Log(l.prefix + strings.TrimRight(line, "\n"))
		}
	}
	return len(p), nil
}

// run runs a command and fails the test on error, returning its output.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// seed picks a random seed and logs it; VB_SEED overrides (and a VB_SEED
// that is not a number fails the test).
func seed(t testing.TB) uint64 {
	t.Helper()
	return testutil.Seed(t)
}

func newRand(s uint64) *rand.Rand {
	var key [32]byte
	for i := range 4 {
		key[i*8] = byte(s >> (8 * i))
		key[i*8+1] = byte(s >> (8*i + 32))
	}
	return rand.New(rand.NewChaCha8(key))
}

// randomFile writes n random bytes (from r) to a new file in dir.
func randomFile(t testing.TB, dir string, n int64, r *rand.Rand) string {
	t.Helper()
	f, err := os.CreateTemp(dir, "random-*.bin")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var key [32]byte
	for i := 0; i < 32; i += 8 {
		binary.LittleEndian.PutUint64(key[i:], r.Uint64())
	}
	src := rand.NewChaCha8(key)
	buf := make([]byte, 1<<20)
	for n > 0 {
		k := min(int64(len(buf)), n)
		src.Read(buf[:k])
		if _, err := f.Write(buf[:k]); err != nil {
			t.Fatal(err)
		}
		n -= k
	}
	return f.Name()
}

// sameFilePrefix compares the first n bytes of two files.
func sameFilePrefix(t testing.TB, a, b string, n int64) {
	t.Helper()
	fa, err := os.Open(a)
	if err != nil {
		t.Fatal(err)
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()
	ba, bb := make([]byte, 1<<20), make([]byte, 1<<20)
	for off := int64(0); off < n; off += int64(len(ba)) {
		k := min(int64(len(ba)), n-off)
		if _, err := fa.ReadAt(ba[:k], off); err != nil {
			t.Fatalf("read %s: %v", a, err)
		}
		if _, err := fb.ReadAt(bb[:k], off); err != nil {
			t.Fatalf("read %s: %v", b, err)
		}
		if !bytes.Equal(ba[:k], bb[:k]) {
			for i := range k {
				if ba[i] != bb[i] {
					t.Fatalf("%s and %s differ at byte %d", a, b, off+i)
				}
			}
		}
	}
}

// readVolume reads the first n bytes of the volume's committed state from
// the store (a read-only open, as a new node would see it).
func (h *harness) readVolume(n int) []byte {
	h.t.Helper()
	ctx := context.Background()
	st, err := backend.Open(ctx, h.store)
	if err != nil {
		h.t.Fatal(err)
	}
	defer st.Close()
	v, err := vb.Open(ctx, st, h.volume, vb.Options{ReadOnly: true, CacheBlocks: -1})
	if err != nil {
		h.t.Fatal(err)
	}
	defer v.Close()
	buf := make([]byte, n)
	if _, err := v.ReadAt(buf, 0); err != nil {
		h.t.Fatal(err)
	}
	return buf
}
