package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

var commands struct {
	mu    sync.Mutex        // guards built
	built map[string]string // package -> binary, once built by this test binary
}

// Command returns the path of a command of this module (pkg is its import
// path relative to the module root, such as "./cmd/vblock"), built from this
// checkout, so tests never run a stale bin/ build and need no `make build`
// first. It is built once per test binary, like [Plugin]: into a directory
// under the user's cache, one file per checkout and command, under a file
// lock shared by concurrently running test binaries. A build error fails
// the test.
func Command(t testing.TB, pkg string) string {
	t.Helper()
	root := RepoRoot(t)
	commands.mu.Lock()
	defer commands.mu.Unlock()
	if p, ok := commands.built[pkg]; ok {
		return p
	}
	p, err := buildCommand(root, pkg)
	if err != nil {
		t.Fatal(err)
	}
	if commands.built == nil {
		commands.built = map[string]string{}
	}
	commands.built[pkg] = p
	return p
}

func buildCommand(root, pkg string) (string, error) {
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "viperblock-test-bin")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", err
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return "", fmt.Errorf("testutil: lock %s: %w", lock.Name(), err)
	}
	defer unix.Flock(int(lock.Fd()), unix.LOCK_UN) //nolint:errcheck
	// go build replaces the file (removes, then writes): a binary another
	// test binary is running keeps its old contents.
	out := filepath.Join(dir, strings.NewReplacer("/", "_", ":", "_").Replace(root)+"-"+filepath.Base(pkg))
	// `go test` puts its own Go first on the PATH of what tests run.
	goBin := "go"
	cmd := exec.Command(goBin, "build", "-o", out, pkg)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("testutil: go build %s: %v\n%s", pkg, err, b)
	}
	return out, nil
}
