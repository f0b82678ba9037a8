// Package version says which build of Viperblock is running. Every binary
// (vblock, controller, node and the nbdkit plugin) reports the same three
// values, which `make build` stamps in with the linker:
//
//	go build -ldflags "-X github.com/viperblock/viperblock-csi/internal/version.Version=v0.2.0 \
//	    -X github.com/viperblock/viperblock-csi/internal/version.Commit=<sha> \
//	    -X github.com/viperblock/viperblock-csi/internal/version.BuildDate=2026-01-02T03:04:05Z"
//
// A binary built without them (go build, go install, go test) falls back
// to what the Go toolchain records of the source tree (vcs.revision,
// vcs.time and vcs.modified in runtime/debug.BuildInfo), and to "dev" for
// the version when there is nothing better.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
)

// Stamped by the linker (-X); empty when the build did not set them.
var (
	// Version is `git describe --tags --always --dirty` of the tree built
	// (or VERSION=... given to make).
	Version string
	// Commit is the full commit hash the tree was at.
	Commit string
	// BuildDate is when the binary was built, RFC 3339 in UTC.
	BuildDate string
)

// Info is one binary's version report. Its JSON form is what
// `vblock version --json` prints.
type Info struct {
	Version   string `json:"version"`
	Commit    string `json:"commit,omitempty"`
	BuildDate string `json:"buildDate,omitempty"`
	GoVersion string `json:"goVersion"`
	Platform  string `json:"platform"`
}

var (
	once sync.Once
	info Info
)

// Get returns the running binary's version report.
func Get() Info {
	once.Do(func() {
		bi, _ := debug.ReadBuildInfo()
		info = resolve(Version, Commit, BuildDate, bi)
	})
	return info
}

// String is the version alone, as --version prints it.
func String() string { return Get().Version }

// resolve fills what the linker did not stamp from the toolchain's build
// information (bi may be nil).
func resolve(version, commit, date string, bi *debug.BuildInfo) Info {
	in := Info{Version: version, Commit: commit, BuildDate: date,
		GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if bi != nil {
		var rev, when string
		modified := false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.time":
				when = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
		if in.Commit == "" {
			in.Commit = rev
		}
		if in.BuildDate == "" {
			// Not the build's date, but the commit's: the closest the
			// toolchain records.
			in.BuildDate = when
		}
		if in.Version == "" {
			switch v := bi.Main.Version; {
			case v != "" && v != "(devel)":
				in.Version = v // go install module@version
			case rev != "":
				in.Version = "dev-" + short(rev)
				if modified {
					in.Version += "-dirty"
				}
			}
		}
	}
	if in.Version == "" {
		in.Version = "dev"
	}
	return in
}

func short(rev string) string {
	if len(rev) > 12 {
		return rev[:12]
	}
	return rev
}

// Long is a one-line report: the version, then commit, build date, Go
// version and platform.
func Long(program string) string {
	in := Get()
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", program, in.Version)
	if in.Commit != "" {
		fmt.Fprintf(&b, " (commit %s", in.Commit)
		if in.BuildDate != "" {
			fmt.Fprintf(&b, ", built %s", in.BuildDate)
		}
		b.WriteString(")")
	}
	fmt.Fprintf(&b, " %s %s", in.GoVersion, in.Platform)
	return b.String()
}
