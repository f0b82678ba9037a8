package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/viperblock/viperblock-csi/internal/testutil"
	"github.com/viperblock/viperblock-csi/internal/version"
)

// The binaries report the version the Makefile stamps into them: build
// each with the Makefile's own -ldflags (make print-ldflags, with test
// values for VERSION, COMMIT and BUILD_DATE) and ask it. GetPluginInfo
// reports the same (pkg/driver reads package version); the nbdkit plugin
// reports it as its version in nbdkit --dump-plugin.
func TestVersionStamp(t *testing.T) {
	if testing.Short() {
		t.Skip("builds four binaries; skipped with -short")
	}
	const (
		want   = "v9.8.7-test-g1234567-dirty"
		commit = "0123456789abcdef0123456789abcdef01234567"
		date   = "2031-02-03T04:05:06Z"
	)
	out, err := exec.Command("make", "-s", "-C", "../..", "print-ldflags", "VERSION="+want, "COMMIT="+commit, "BUILD_DATE="+date).Output()
	if err != nil {
		t.Fatalf("make print-ldflags: %v", err)
	}
	ldflags := strings.TrimSpace(string(out))
	dir := t.TempDir()
	for cmd, args := range map[string][]string{"vblock": {"version"}, "controller": {"--version"}, "node": {"--version"}} {
		bin := filepath.Join(dir, cmd)
		build := exec.Command("go", "build", "-ldflags", ldflags, "-o", bin, "../"+cmd)
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", cmd, err, out)
		}
		out, err := exec.Command(bin, args...).CombinedOutput()
		line := strings.TrimSpace(string(out))
		if err != nil || !strings.HasPrefix(line, cmd+" "+want+" (commit "+commit+", built "+date+") go") {
			t.Errorf("%s %s = %q, %v; want %s %s with commit and date", cmd, strings.Join(args, " "), out, err, cmd, want)
		}
		if cmd != "vblock" {
			continue
		}
		out, err = exec.Command(bin, "version", "--json").Output()
		var got version.Info
		if err != nil || json.Unmarshal(out, &got) != nil {
			t.Fatalf("vblock version --json = %q, %v", out, err)
		}
		if got.Version != want || got.Commit != commit || got.BuildDate != date || got.GoVersion == "" || got.Platform == "" {
			t.Errorf("vblock version --json = %+v", got)
		}
	}

	t.Run("nbdkit-plugin", func(t *testing.T) {
		testutil.NeedCommands(t, "nbdkit")
		so := filepath.Join(dir, "plugin.so")
		build := exec.Command("go", "build", "-buildmode=c-shared", "-ldflags", ldflags, "-o", so, "../nbdkit-plugin")
		build.Env = append(build.Environ(), "CGO_ENABLED=1")
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("build the plugin: %v\n%s", err, out)
		}
		out, err := exec.CommandContext(context.Background(), "nbdkit", "--dump-plugin", so).Output()
		if err != nil || !bytes.Contains(out, []byte("\nversion="+want+"\n")) {
			t.Errorf("nbdkit --dump-plugin = %v\n%s\nwant version=%s", err, out, want)
		}
	})
}
