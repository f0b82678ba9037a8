package s3_test

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/internal/testutil/s3server"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

// TestCredentialRotationVersitygw rotates keys on a real S3 server while
// writers run: the store starts with account A's key, the file is renamed
// over with account B's and A is deleted at once; later the file is
// rewritten in place with account C's and B's secret is changed. No
// operation fails, and the store ends up signing with C.
func TestCredentialRotationVersitygw(t *testing.T) {
	t.Parallel()
	srv := s3server.StartWithIAM(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	keys := [][2]string{{"vbrotA", "secretA0123456789"}, {"vbrotB", "secretB0123456789"}, {"vbrotC", "secretC0123456789"}}
	for _, k := range keys {
		if err := srv.CreateUser(ctx, k[0], k[1]); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(t.TempDir(), "creds.env")
	replaceFile(t, path, credsContent(keys[0][0], keys[0][1]))
	s := open(t, s3server.StoreURL(srv.Bucket, "rotate", srv.Endpoint, path))
	defer s.Close()

	// Writers: each puts its own keys and chains conditional updates of its
	// own object, reads back and lists, until told to stop.
	const writers = 4
	stop := make(chan struct{})
	errs := make(chan error, writers)
	var wg sync.WaitGroup
	var ops atomic.Uint64
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ver := backend.Version("")
			for i := 0; ; i++ {
				select {
				case <-stop:
					errs <- nil
					return
				default:
				}
				data := []byte(fmt.Sprintf("writer %d op %d", w, i))
				key := fmt.Sprintf("w%d/%06d", w, i%50)
				if err := s.Put(ctx, key, data); err != nil {
					errs <- fmt.Errorf("Put %s: %w", key, err)
					return
				}
				got, _, err := s.Get(ctx, key)
				if err != nil || !bytes.Equal(got, data) {
					errs <- fmt.Errorf("Get %s: %q, %v", key, got, err)
					return
				}
				v, err := s.PutIf(ctx, fmt.Sprintf("w%d/cas", w), data, ver)
				if err != nil {
					errs <- fmt.Errorf("PutIf: %w", err)
					return
				}
				ver = v
				if i%10 == 0 {
					if _, err := s.List(ctx, fmt.Sprintf("w%d/", w)); err != nil {
						errs <- fmt.Errorf("List: %w", err)
						return
					}
				}
				ops.Add(1)
			}
		}()
	}
	waitOps := func(n uint64) {
		t.Helper()
		target := ops.Load() + n
		for ops.Load() < target {
			select {
			case err := <-errs:
				t.Fatalf("writer failed: %v", err)
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	waitOps(20)
	replaceFile(t, path, credsContent(keys[1][0], keys[1][1]))
	if err := srv.DeleteUser(ctx, keys[0][0]); err != nil {
		t.Fatal(err)
	}
	waitOps(40)
	rewriteFile(t, path, credsContent(keys[2][0], keys[2][1]))
	if err := srv.SetUserSecret(ctx, keys[1][0], "changed0123456789"); err != nil {
		t.Fatal(err)
	}
	waitOps(40)
	close(stop)
	wg.Wait()
	for range writers {
		if err := <-errs; err != nil {
			t.Fatalf("writer failed: %v", err)
		}
	}
	st := s.Stats()
	t.Logf("%d rounds; stats %+v", ops.Load(), st)
	if st.CredentialReloads != 2 {
		t.Errorf("CredentialReloads %d, want 2", st.CredentialReloads)
	}
	if st.AuthRetries == 0 {
		t.Errorf("no AuthRetries: the revocations did not hit a request, the test proves less than it should")
	}
	// The old keys are really refused, and the file's key works.
	for _, k := range keys[:2] {
		p := filepath.Join(t.TempDir(), "old.env")
		replaceFile(t, p, credsContent(k[0], k[1]))
		old := open(t, s3server.StoreURL(srv.Bucket, "rotate", srv.Endpoint, p))
		if err := old.Put(ctx, "old", []byte("x")); err == nil {
			t.Errorf("Put with revoked key %s succeeded", k[0])
		}
		old.Close()
	}
}
