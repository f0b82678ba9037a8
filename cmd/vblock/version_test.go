package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The binaries report the version the Makefile stamps into them: build
// each with the Makefile's -ldflags (VB_VERSION replaced by a test value)
// and ask it. GetPluginInfo reports the same variable.
func TestVersionStamp(t *testing.T) {
	if testing.Short() {
		t.Skip("builds three binaries; skipped with -short")
	}
	mk, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`-ldflags "([^"]*)\$\(VB_VERSION\)"`).FindSubmatch(mk)
	if m == nil {
		t.Fatal("the Makefile does not stamp the version with -ldflags \"... $(VB_VERSION)\"")
	}
	const want = "v9.8.7-test-g1234567-dirty"
	dir := t.TempDir()
	for cmd, args := range map[string][]string{"vblock": {"version"}, "controller": {"--version"}, "node": {"--version"}} {
		bin := filepath.Join(dir, cmd)
		build := exec.Command("go", "build", "-ldflags", string(m[1])+want, "-o", bin, "../"+cmd)
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", cmd, err, out)
		}
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != want {
			t.Errorf("%s %s = %q, %v; want %q", cmd, strings.Join(args, " "), out, err, want)
		}
	}
}
