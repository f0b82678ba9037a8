package credsync_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
	"k8s.io/klog/v2"

	"github.com/viperblock/viperblock-csi/internal/testutil"
	"github.com/viperblock/viperblock-csi/pkg/credsync"
)

// secretVolume lays out a directory as the kubelet does for a Secret
// volume: each version in a timestamped directory, a "..data" link to the
// current one and, per key, a link through "..data".
type secretVolume struct {
	t       *testing.T
	dir     string
	version int
}

func newSecretVolume(t *testing.T, keys map[string]string) *secretVolume {
	v := &secretVolume{t: t, dir: filepath.Join(t.TempDir(), "secret")}
	if err := os.Mkdir(v.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	v.update(keys)
	return v
}

// update writes a new version and swaps "..data" to it, then removes the
// old version and links for keys the new one lacks, in the kubelet's order.
func (v *secretVolume) update(keys map[string]string) {
	t := v.t
	v.version++
	ts := fmt.Sprintf("..2026_01_01_00_00_00.%09d", v.version)
	if err := os.Mkdir(filepath.Join(v.dir, ts), 0o755); err != nil {
		t.Fatal(err)
	}
	for k, val := range keys {
		if err := os.WriteFile(filepath.Join(v.dir, ts, k), []byte(val), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	old, _ := os.Readlink(filepath.Join(v.dir, "..data"))
	tmp := filepath.Join(v.dir, "..data_tmp")
	if err := os.Symlink(ts, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(v.dir, "..data")); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{credsync.AccessKeyID, credsync.SecretAccessKey, credsync.SessionToken,
		credsync.AccessKeyIDFile, credsync.SecretAccessKeyFile, credsync.SessionTokenFile,
		"awsAccessKeyID", "awsSecretAccessKey", "awsSessionToken"} {
		link := filepath.Join(v.dir, k)
		_, has := keys[k]
		_, err := os.Lstat(link)
		switch {
		case has && err != nil:
			if err := os.Symlink(filepath.Join("..data", k), link); err != nil {
				t.Fatal(err)
			}
		case !has && err == nil:
			if err := os.Remove(link); err != nil {
				t.Fatal(err)
			}
		}
	}
	if old != "" {
		if err := os.RemoveAll(filepath.Join(v.dir, old)); err != nil {
			t.Fatal(err)
		}
	}
}

func keys(access, secret string) map[string]string {
	return map[string]string{credsync.AccessKeyIDFile: access, credsync.SecretAccessKeyFile: secret}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func wantFile(t *testing.T, path, srcDir string, lines ...string) {
	t.Helper()
	want := "# Written by viperblock from the Secret volume " + srcDir + "; do not edit.\n" + strings.Join(lines, "\n") + "\n"
	if got := readFile(t, path); got != want {
		t.Errorf("%s:\n%s\nwant:\n%s", path, got, want)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %v, want 0600", path, fi.Mode().Perm())
	}
}

func TestSyncPlainDirectory(t *testing.T) {
	t.Parallel()
	src := t.TempDir()
	dst := filepath.Join(t.TempDir(), "run", "creds.env") // parent made by Sync
	write := func(name, val string) {
		if err := os.WriteFile(filepath.Join(src, name), []byte(val), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(credsync.AccessKeyIDFile, "AKIDONE\n") // --from-file keeps the newline
	write(credsync.SecretAccessKeyFile, " se cret'\"=1 ")
	changed, err := credsync.Sync(src, dst)
	if err != nil || !changed {
		t.Fatalf("first Sync: %v, %v; want a write", changed, err)
	}
	wantFile(t, dst, src, `AWS_ACCESS_KEY_ID="AKIDONE"`, `AWS_SECRET_ACCESS_KEY="se cret'"=1"`)
	fi1, _ := os.Stat(dst)
	if changed, err := credsync.Sync(src, dst); err != nil || changed {
		t.Fatalf("Sync of an unchanged source: %v, %v; want no write", changed, err)
	}
	if fi2, _ := os.Stat(dst); !os.SameFile(fi1, fi2) {
		t.Error("an unchanged source replaced the file")
	}
	write(credsync.SessionTokenFile, "ToKeN==")
	if changed, err := credsync.Sync(src, dst); err != nil || !changed {
		t.Fatalf("Sync with a session token: %v, %v", changed, err)
	}
	wantFile(t, dst, src, `AWS_ACCESS_KEY_ID="AKIDONE"`, `AWS_SECRET_ACCESS_KEY="se cret'"=1"`, `AWS_SESSION_TOKEN="ToKeN=="`)
	if err := os.Remove(filepath.Join(src, credsync.SessionTokenFile)); err != nil {
		t.Fatal(err)
	}
	if changed, err := credsync.Sync(src, dst); err != nil || !changed {
		t.Fatalf("Sync without the session token: %v, %v", changed, err)
	}
	wantFile(t, dst, src, `AWS_ACCESS_KEY_ID="AKIDONE"`, `AWS_SECRET_ACCESS_KEY="se cret'"=1"`)
	if ents, _ := os.ReadDir(filepath.Dir(dst)); len(ents) != 1 {
		t.Errorf("destination directory holds %d entries, want only the file (no temporary left)", len(ents))
	}
}

// TestSyncInvalidSource: an incomplete or unwritable source is an error
// naming files but not values, and the file keeps its content.
func TestSyncInvalidSource(t *testing.T) {
	t.Parallel()
	vol := newSecretVolume(t, keys("AKIDGOOD", "SeCrEtGoOd"))
	dst := filepath.Join(t.TempDir(), "creds.env")
	if _, err := credsync.Sync(vol.dir, dst); err != nil {
		t.Fatal(err)
	}
	good := readFile(t, dst)
	for name, k := range map[string]map[string]string{
		"no secret":      {credsync.AccessKeyIDFile: "AKIDBAD"},
		"empty key":      keys("  \n", "SeCrEtBaD"),
		"line break":     keys("AKIDBAD", "SeCrEt\nBaD"),
		"NUL":            keys("AKIDBAD", "SeCrEt\x00BaD"),
		"token too long": {credsync.AccessKeyIDFile: "AKIDBAD", credsync.SecretAccessKeyFile: "SeCrEtBaD", credsync.SessionTokenFile: strings.Repeat("x", 17<<10)},
	} {
		vol.update(k)
		changed, err := credsync.Sync(vol.dir, dst)
		if err == nil || changed || !errors.Is(err, credsync.ErrInvalid) {
			t.Errorf("%s: Sync = %v, %v; want ErrInvalid and no write", name, changed, err)
		}
		if err != nil && (strings.Contains(err.Error(), "SeCrEt") || strings.Contains(err.Error(), "AKID")) {
			t.Errorf("%s: error repeats a value: %v", name, err)
		}
		if readFile(t, dst) != good {
			t.Errorf("%s: the file changed", name)
		}
	}
}

// TestSyncSecretVolumeSwap follows the kubelet's "..data" swap.
func TestSyncSecretVolumeSwap(t *testing.T) {
	t.Parallel()
	vol := newSecretVolume(t, keys("AKIDONE", "SeCrEtOnE"))
	dst := filepath.Join(t.TempDir(), "creds.env")
	if _, err := credsync.Sync(vol.dir, dst); err != nil {
		t.Fatal(err)
	}
	wantFile(t, dst, vol.dir, `AWS_ACCESS_KEY_ID="AKIDONE"`, `AWS_SECRET_ACCESS_KEY="SeCrEtOnE"`)
	vol.update(map[string]string{
		credsync.AccessKeyIDFile:     "AKIDTWO",
		credsync.SecretAccessKeyFile: "SeCrEtTwO",
		credsync.SessionTokenFile:    "ToKeNtWo",
	})
	if changed, err := credsync.Sync(vol.dir, dst); err != nil || !changed {
		t.Fatalf("Sync after the swap: %v, %v", changed, err)
	}
	wantFile(t, dst, vol.dir, `AWS_ACCESS_KEY_ID="AKIDTWO"`, `AWS_SECRET_ACCESS_KEY="SeCrEtTwO"`, `AWS_SESSION_TOKEN="ToKeNtWo"`)
}

// TestSyncNeverMixesVersions swaps the Secret volume between two versions
// as fast as it can while syncing: every file written is one whole version.
func TestSyncNeverMixesVersions(t *testing.T) {
	t.Parallel()
	vol := newSecretVolume(t, keys("AKIDONE", "SeCrEtOnE"))
	dst := filepath.Join(t.TempDir(), "creds.env")
	versions := []map[string]string{keys("AKIDONE", "SeCrEtOnE"), keys("AKIDTWO", "SeCrEtTwO")}
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; !stop.Load(); i++ {
			vol.update(versions[i%2])
		}
	}()
	// At least half a second of swaps, and on a slow disk until two of
	// them were followed (or 30 s).
	start := time.Now()
	writes := 0
	for since := time.Duration(0); since < 500*time.Millisecond || writes < 2 && since < 30*time.Second; since = time.Since(start) {
		changed, err := credsync.Sync(vol.dir, dst)
		if err != nil {
			continue // a read that kept losing the race; the next one is fresh
		}
		if changed {
			writes++
		}
		got := readFile(t, dst)
		one := strings.Contains(got, `"AKIDONE"`) && strings.Contains(got, `"SeCrEtOnE"`)
		two := strings.Contains(got, `"AKIDTWO"`) && strings.Contains(got, `"SeCrEtTwO"`)
		if one == two {
			stop.Store(true)
			wg.Wait()
			t.Fatalf("file mixes versions:\n%s", got)
		}
	}
	stop.Store(true)
	wg.Wait()
	t.Logf("%d writes over %d versions", writes, vol.version)
	if writes < 2 {
		t.Errorf("only %d writes: the swaps were not followed", writes)
	}
}

// TestRun follows a change within a few intervals, logs it without values
// and returns when its context ends.
func TestRun(t *testing.T) {
	t.Parallel()
	vol := newSecretVolume(t, keys("AKIDONE", "SeCrEtOnE"))
	dst := filepath.Join(t.TempDir(), "creds.env")
	var mu sync.Mutex
	var logs []string
	logger := funcr.New(func(prefix, args string) {
		mu.Lock()
		defer mu.Unlock()
		logs = append(logs, prefix+" "+args)
	}, funcr.Options{})
	ctx, cancel := context.WithCancel(klog.NewContext(context.Background(), logger))
	done := make(chan error, 1)
	go func() { done <- credsync.Run(ctx, vol.dir, dst, 10*time.Millisecond) }()
	waitFor := func(what string) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			if b, _ := os.ReadFile(dst); strings.Contains(string(b), what) {
				return
			}
		}
		t.Fatalf("the file never held %s", what)
	}
	waitFor("AKIDONE")
	vol.update(keys("", "SeCrEtBaD")) // incomplete: logged once, file kept
	// Let Run see the bad version (it may still be syncing the first
	// write's directory) before the good one replaces it.
	testutil.Eventually(t, 10*time.Second, "Run to report the incomplete version", func() (bool, error) {
		mu.Lock()
		defer mu.Unlock()
		for _, l := range logs {
			if strings.Contains(l, "cannot update") {
				return true, nil
			}
		}
		return false, nil
	})
	vol.update(keys("AKIDTWO", "SeCrEtTwO"))
	waitFor("AKIDTWO")
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	var changes, failures int
	for _, l := range logs {
		if strings.Contains(l, "SeCrEt") || strings.Contains(l, "AKID") {
			t.Errorf("log repeats a value: %s", l)
		}
		if strings.Contains(l, "rewritten") {
			changes++
		}
		if strings.Contains(l, "cannot update") {
			failures++
		}
	}
	if changes != 2 || failures != 1 {
		t.Errorf("logged %d changes and %d failures, want 2 and 1:\n%s", changes, failures, strings.Join(logs, "\n"))
	}
}
