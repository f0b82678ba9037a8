package driver

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

// One cache of store handles: by name (with or without secrets) and by a
// volume's URL, each opened once and reused until dropped.
func TestStoreSetOneCache(t *testing.T) {
	var mu sync.Mutex
	opened := map[string]int{}
	open := func(_ context.Context, url string) (backend.Store, error) {
		mu.Lock()
		opened[url]++
		mu.Unlock()
		return backend.NewMem(), nil
	}
	credDir := t.TempDir()
	s := newStoreSet(&Options{Stores: Stores{"a": "s3://bucket/p?endpoint=http://127.0.0.1:1"}}, credDir, open)
	defer s.close()
	secrets := map[string]string{"awsAccessKeyID": "AK", "awsSecretAccessKey": "SK"}
	for i := 0; i < 3; i++ {
		if _, err := s.get(ctx, "a", nil); err != nil {
			t.Fatal(err)
		}
		if _, err := s.get(ctx, "a", secrets); err != nil {
			t.Fatal(err)
		}
		if _, err := s.byURL(ctx, "s3://bucket/p?credentials_file=/vol/creds", nil); err != nil {
			t.Fatal(err)
		}
	}
	if len(opened) != 3 {
		t.Fatalf("opened %v: want three handles, each once", opened)
	}
	for u, n := range opened {
		if n != 1 {
			t.Fatalf("%s opened %d times", u, n)
		}
		if strings.Contains(u, credDir) {
			files, _ := filepath.Glob(filepath.Join(credDir, "a-*.env"))
			if len(files) != 1 {
				t.Fatalf("credentials files %v", files)
			}
			if fi, err := os.Stat(files[0]); err != nil || fi.Mode().Perm() != 0o600 {
				t.Fatalf("credentials file mode %v, %v", fi.Mode(), err)
			}
		}
	}
	s.drop("s3://bucket/p?credentials_file=/vol/creds")
	if _, err := s.byURL(ctx, "s3://bucket/p?credentials_file=/vol/creds", nil); err != nil {
		t.Fatal(err)
	}
	if opened["s3://bucket/p?credentials_file=/vol/creds"] != 2 {
		t.Fatal("a dropped handle was not opened again")
	}
	if _, err := s.get(ctx, "nope", nil); err == nil {
		t.Fatal("an unconfigured store opened")
	}
}
