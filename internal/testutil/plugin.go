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

// PluginFile is the plugin's file name.
const PluginFile = "nbdkit-viperblock-plugin.so"

var lookPath = exec.LookPath

// RepoRoot returns the module root: the nearest directory above the working
// directory that holds go.mod.
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("cannot find the repository root (go.mod)")
		}
		dir = parent
	}
}

var plugin struct {
	once sync.Once
	path string
	err  error
	skip string // a missing capability, when err is nil and path is ""
}

// Plugin returns the path of the viperblock nbdkit plugin built from this
// checkout, so tests never run a stale lib/ build and need no `make build`
// first. VB_PLUGIN names another build to test instead. The plugin is built
// once per test binary with `go build -buildmode=c-shared` into a directory
// under the user's cache, under a file lock shared by concurrently running
// test binaries; the Go build cache makes a rebuild of unchanged sources
// cheap. Without a C compiler or nbdkit's plugin header the test is skipped
// (capability "nbdkit-plugin-dev", a failure under VB_REQUIRE); any other
// build error fails it.
func Plugin(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("VB_PLUGIN"); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("VB_PLUGIN: %v", err)
		}
		return p
	}
	root := RepoRoot(t)
	plugin.once.Do(func() { plugin.path, plugin.skip, plugin.err = buildPlugin(root) })
	if plugin.err != nil {
		t.Fatal(plugin.err)
	}
	if plugin.skip != "" {
		Skip(t, "nbdkit-plugin-dev", "%s", plugin.skip)
	}
	return plugin.path
}

func buildPlugin(root string) (path, skip string, err error) {
	if _, err := lookPath("gcc"); err != nil {
		return "", "building the nbdkit plugin needs gcc (cgo)", nil
	}
	if _, err := os.Stat("/usr/include/nbdkit-plugin.h"); err != nil {
		return "", "building the nbdkit plugin needs nbdkit-plugin.h (Debian package nbdkit-plugin-dev)", nil
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "viperblock-test-plugin")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", err
	}
	lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", "", err
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return "", "", fmt.Errorf("testutil: lock %s: %w", lock.Name(), err)
	}
	defer unix.Flock(int(lock.Fd()), unix.LOCK_UN) //nolint:errcheck
	// One file per checkout, so two checkouts never test each other's build.
	out := filepath.Join(dir, strings.NewReplacer("/", "_", ":", "_").Replace(root)+"-"+PluginFile)
	// `go test` puts its own Go first on the PATH of what tests run.
	goBin := "go"
	cmd := exec.Command(goBin, "build", "-buildmode=c-shared", "-o", out, "./cmd/nbdkit-plugin")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("testutil: building the nbdkit plugin: %v\n%s", err, b)
	}
	os.Remove(strings.TrimSuffix(out, ".so") + ".h")
	return out, "", nil
}
