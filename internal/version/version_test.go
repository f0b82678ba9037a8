package version

import (
	"runtime/debug"
	"testing"
)

func TestResolve(t *testing.T) {
	vcs := &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "0123456789abcdef0123456789abcdef01234567"},
		{Key: "vcs.time", Value: "2030-01-02T03:04:05Z"},
		{Key: "vcs.modified", Value: "true"},
	}}
	for _, tc := range []struct {
		name                   string
		version, commit, date  string
		bi                     *debug.BuildInfo
		wantV, wantC, wantDate string
	}{
		{"stamped", "v1.2.3", "abc", "2031-01-01T00:00:00Z", vcs, "v1.2.3", "abc", "2031-01-01T00:00:00Z"},
		{"vcs fallback", "", "", "", vcs, "dev-0123456789ab-dirty", "0123456789abcdef0123456789abcdef01234567", "2030-01-02T03:04:05Z"},
		{"go install", "", "", "", &debug.BuildInfo{Main: debug.Module{Version: "v0.3.0"}}, "v0.3.0", "", ""},
		{"nothing", "", "", "", nil, "dev", "", ""},
		{"version only", "v2.0.0", "", "", vcs, "v2.0.0", "0123456789abcdef0123456789abcdef01234567", "2030-01-02T03:04:05Z"},
	} {
		got := resolve(tc.version, tc.commit, tc.date, tc.bi)
		if got.Version != tc.wantV || got.Commit != tc.wantC || got.BuildDate != tc.wantDate || got.GoVersion == "" || got.Platform == "" {
			t.Errorf("%s: resolve = %+v, want version %q commit %q date %q", tc.name, got, tc.wantV, tc.wantC, tc.wantDate)
		}
	}
}
