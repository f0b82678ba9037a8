package credsync_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
	"k8s.io/klog/v2"

	"github.com/viperblock/viperblock-csi/pkg/credsync"
)

func TestCanonicalKey(t *testing.T) {
	for _, tc := range []struct {
		name, want       string
		deprecated, isOK bool
	}{
		{"AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID", false, true},
		{"AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY", false, true},
		{"AWS_SESSION_TOKEN", "AWS_SESSION_TOKEN", false, true},
		{"accessKeyID", "AWS_ACCESS_KEY_ID", true, true},
		{"secretAccessKey", "AWS_SECRET_ACCESS_KEY", true, true},
		{"sessionToken", "AWS_SESSION_TOKEN", true, true},
		{"awsAccessKeyID", "AWS_ACCESS_KEY_ID", true, true},
		{"awsSecretAccessKey", "AWS_SECRET_ACCESS_KEY", true, true},
		{"awsSessionToken", "AWS_SESSION_TOKEN", true, true},
		{"aws_access_key_id", "", false, false},
		{"region", "", false, false},
	} {
		c, dep, ok := credsync.CanonicalKey(tc.name)
		if c != tc.want || dep != tc.deprecated || ok != tc.isOK {
			t.Errorf("CanonicalKey(%q) = %q, %v, %v; want %q, %v, %v", tc.name, c, dep, ok, tc.want, tc.deprecated, tc.isOK)
		}
	}
}

// A Secret with the canonical keys, with the old ones, or with both
// holding the same values gives the same file; two spellings with
// different values are refused.
func TestSyncSpellings(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		keys map[string]string
		err  bool
	}{
		{"canonical", map[string]string{"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK", "AWS_SESSION_TOKEN": "TOK"}, false},
		{"shipped before", map[string]string{"accessKeyID": "AK", "secretAccessKey": "SK", "sessionToken": "TOK"}, false},
		{"csi spelling", map[string]string{"awsAccessKeyID": "AK", "awsSecretAccessKey": "SK", "awsSessionToken": "TOK"}, false},
		{"mixed, same values", map[string]string{"AWS_ACCESS_KEY_ID": "AK", "accessKeyID": "AK", "secretAccessKey": "SK", "AWS_SESSION_TOKEN": "TOK"}, false},
		{"two values", map[string]string{"AWS_ACCESS_KEY_ID": "AK", "accessKeyID": "OTHER", "AWS_SECRET_ACCESS_KEY": "SK"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vol := newSecretVolume(t, tc.keys)
			dst := filepath.Join(t.TempDir(), "creds.env")
			_, err := credsync.Sync(vol.dir, dst)
			if tc.err {
				if !errors.Is(err, credsync.ErrInvalid) || strings.Contains(err.Error(), "OTHER") {
					t.Fatalf("Sync = %v, want ErrInvalid naming no value", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			wantFile(t, dst, vol.dir, `AWS_ACCESS_KEY_ID="AK"`, `AWS_SECRET_ACCESS_KEY="SK"`, `AWS_SESSION_TOKEN="TOK"`)
			if !credsync.HasAccessKey(vol.dir) {
				t.Error("HasAccessKey = false")
			}
		})
	}
	if credsync.HasAccessKey(t.TempDir()) {
		t.Error("HasAccessKey of an empty directory = true")
	}
}

// Run warns once about keys under old spellings, naming them, and not
// about canonical ones.
func TestRunWarnsDeprecatedKeys(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var lines []string
	logger := funcr.New(func(prefix, args string) {
		mu.Lock()
		lines = append(lines, args)
		mu.Unlock()
	}, funcr.Options{})
	vol := newSecretVolume(t, map[string]string{"accessKeyID": "AK", "AWS_SECRET_ACCESS_KEY": "SK"})
	ctx, cancel := context.WithCancel(klog.NewContext(context.Background(), logger))
	done := make(chan struct{})
	go func() {
		credsync.Run(ctx, vol.dir, filepath.Join(t.TempDir(), "creds.env"), 10*time.Millisecond)
		close(done)
	}()
	time.Sleep(100 * time.Millisecond)
	cancel()
	<-done
	mu.Lock()
	defer mu.Unlock()
	n := 0
	for _, l := range lines {
		if strings.Contains(l, "deprecated") {
			n++
			if !strings.Contains(l, "accessKeyID") || strings.Contains(l, `"AK"`) {
				t.Errorf("warning %s", l)
			}
		}
	}
	if n != 1 {
		t.Errorf("%d deprecation warnings, want 1: %q", n, lines)
	}
}
