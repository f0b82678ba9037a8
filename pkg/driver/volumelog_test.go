package driver

import (
	"strings"
	"sync"
	"testing"

	"github.com/go-logr/logr/funcr"
	"k8s.io/klog/v2"
)

// TestVolumeLog: nbdkit's log lines reach klog with the volume's handle,
// their level as the severity and nbdkit's prefix stripped.
func TestVolumeLog(t *testing.T) {
	var mu sync.Mutex
	var got []string
	klog.SetLogger(funcr.New(func(prefix, args string) {
		mu.Lock()
		defer mu.Unlock()
		if strings.Contains(args, `"volume_id"="default/v1"`) || strings.Contains(args, `"volume_id":"default/v1"`) {
			got = append(got, prefix+" "+args)
		}
	}, funcr.Options{Verbosity: 10}))
	defer klog.ClearLogger()
	w := volumeLog{volumeID: "default/v1"}
	for _, l := range []string{
		"nbdkit: viperblock: info: volume open volume=v1 size=4096\n",
		"nbdkit: viperblock[1]: error: viperblock: volume fenced or released\n",
		"(earlier) nbdkit: viperblock: warning: drain failed; retrying\n",
		"---- 2026-12-06T23:10:19Z starting nbdkit\n",
		"nbdkit: error: volume fenced: another owner took it over volume=v1\n",
	} {
		if n, err := w.Write([]byte(l)); n != len(l) || err != nil {
			t.Fatalf("Write: %d, %v", n, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	want := []string{
		`"msg"="volume open volume=v1 size=4096"`,
		`"msg"="viperblock: volume fenced or released" "error"=null`,
		`"msg"="drain failed; retrying" "volume_id"="default/v1" "source"="nbdkit" "earlier"=true "severity"="warning"`,
		`"msg"="---- 2026-12-06T23:10:19Z starting nbdkit"`,
		`"msg"="volume fenced: another owner took it over volume=v1" "error"=null`,
	}
	if len(got) != len(want) {
		t.Fatalf("logged %d lines, want %d:\n%s", len(got), len(want), strings.Join(got, "\n"))
	}
	for i := range want {
		if !strings.Contains(got[i], want[i]) {
			t.Errorf("line %d: %s\nwant it to contain %s", i, got[i], want[i])
		}
	}
}
