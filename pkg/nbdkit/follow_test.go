package nbdkit

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/internal/testutil"
)

// syncBuf is a Writer the test can read while a follower writes.
type syncBuf struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func appendTo(t *testing.T, path, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
}

// TestFollow: lines appended after the starting offset are forwarded with
// the prefix, a line written in two pieces arrives whole, the file is
// truncated once over the limit (and lines written after that arrive), and
// a last partial line is forwarded when done closes.
func TestFollow(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	appendTo(t, path, "before 1\nbefore 2\n")
	var out syncBuf
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		Follow(path, -1, done, &out, FollowOptions{Prefix: "v1: ", Interval: 5 * time.Millisecond, Limit: 100, Earlier: 1})
		close(finished)
	}()
	want := "v1: (earlier) before 2\n"
	testutil.Eventually(t, 10*time.Second, "the earlier line", func() (bool, error) { return out.String() == want, nil })
	appendTo(t, path, "one\ntw")
	want += "v1: one\n"
	testutil.Eventually(t, 10*time.Second, "line one", func() (bool, error) { return out.String() == want, nil })
	appendTo(t, path, "o\n")
	want += "v1: two\n"
	testutil.Eventually(t, 10*time.Second, "line two, whole", func() (bool, error) { return out.String() == want, nil })
	long := strings.Repeat("x", 120)
	appendTo(t, path, long+"\n")
	want += "v1: " + long + "\n"
	testutil.Eventually(t, 10*time.Second, "the long line and the truncation", func() (bool, error) {
		fi, err := os.Stat(path)
		return out.String() == want && err == nil && fi.Size() == 0, err
	})
	appendTo(t, path, "after truncation\npartial")
	want += "v1: after truncation\n"
	testutil.Eventually(t, 10*time.Second, "the line after the truncation", func() (bool, error) { return out.String() == want, nil })
	close(done)
	<-finished
	want += "v1: partial\n"
	if got := out.String(); got != want {
		t.Fatalf("forwarded:\n%s\nwant:\n%s", got, want)
	}
}

// TestFollowLogBounded: a real nbdkit under the keeper, verbose so it logs
// every request, keeps writing its log while the follower truncates it:
// the file stays bounded, every line forwarded is whole, and the lines
// nbdkit writes after a truncation still arrive (its descriptor appends).
func TestFollowLogBounded(t *testing.T) {
	testutil.NeedCommands(t, "nbdkit", "nbdinfo")
	dir := t.TempDir()
	c := keeperConfig(dir)
	c.Args = []string{"-v"}
	s, err := Start(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	stopAtEnd(t, s)
	var out syncBuf
	finished := make(chan struct{})
	const limit = 16 << 10
	go func() {
		s.FollowLog(&out, FollowOptions{Prefix: "vol: ", Interval: 5 * time.Millisecond, Limit: limit})
		close(finished)
	}()
	maxSize := int64(0)
	for i := 0; i < 30; i++ {
		if b, err := runCmd("nbdinfo", s.URI()); err != nil {
			t.Fatalf("nbdinfo: %v\n%s", err, b)
		}
		if fi, err := os.Stat(c.LogFile); err == nil {
			maxSize = max(maxSize, fi.Size())
		}
	}
	if err := s.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	<-finished
	got := out.String()
	if !strings.Contains(got, "vol: nbdkit: debug:") {
		t.Fatalf("no debug lines forwarded:\n%.2000s", got)
	}
	for _, l := range strings.Split(strings.TrimSuffix(got, "\n"), "\n") {
		if !strings.HasPrefix(l, "vol: ") || strings.Contains(l[5:], "vol: ") {
			t.Fatalf("mangled line %q", l)
		}
	}
	if strings.Contains(got, "starting nbdkit") {
		t.Fatal("forwarded the supervisor's own header line")
	}
	if len(got) < 3*limit {
		t.Fatalf("only %d bytes forwarded: the test did not make the log exceed the limit enough", len(got))
	}
	// The file can grow past the limit between two passes, not much more.
	if maxSize > 4*limit {
		t.Fatalf("log file reached %d bytes (limit %d)", maxSize, limit)
	}
	t.Logf("forwarded %d bytes; the file peaked at %d bytes", len(got), maxSize)
}
