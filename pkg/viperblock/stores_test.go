package viperblock_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/viperblock/viperblock-csi/internal/testutil/s3server"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	s3store "github.com/viperblock/viperblock-csi/pkg/viperblock/backend/s3"
)

// storeKinds are the backends the Volume suite runs against: the memory
// store, the file store on the real filesystem, and the S3 store on a real
// S3 server (versitygw on 127.0.0.1; the s3 subtests skip when versitygw is
// not installed and CI is unset, see package s3server).
var storeKinds = []string{"mem", "file", "s3"}

// forEachStore runs fn as one parallel subtest per store kind. Within a subtest,
// every call of newStore returns a handle on the same objects, as two nodes
// see one backend: the memory store is shared, the file and S3 stores are
// opened again (a new client each time), so a test that opens a volume "on
// another node" can use a store client of its own.
func forEachStore(t *testing.T, fn func(t *testing.T, newStore func(t *testing.T) backend.Store)) {
	t.Helper()
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			fn(t, storeFactory(t, kind))
		})
	}
}

// storeFactory sets up one store of the given kind for t and returns a
// function that opens handles on it.
func storeFactory(t *testing.T, kind string) func(t *testing.T) backend.Store {
	t.Helper()
	switch kind {
	case "mem":
		m := backend.NewMem()
		return func(*testing.T) backend.Store { return m }
	case "file":
		dir := filepath.Join(t.TempDir(), "store")
		return func(t *testing.T) backend.Store {
			t.Helper()
			s, err := backend.NewFile(nil, dir)
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
	case "s3":
		srv := s3server.Start(t)
		u := srv.URL("vbtest")
		return func(t *testing.T) backend.Store {
			t.Helper()
			return openS3(t, u)
		}
	}
	t.Fatalf("unknown store kind %q", kind)
	return nil
}

// openS3 opens an S3 store by URL (through backend.Open, as the product
// does) and closes it when t ends.
func openS3(t testing.TB, rawURL string) *s3store.Store {
	t.Helper()
	st, err := backend.Open(context.Background(), rawURL)
	if err != nil {
		t.Fatalf("open %s: %v", rawURL, err)
	}
	s, ok := st.(*s3store.Store)
	if !ok {
		t.Fatalf("backend.Open(%q) returned a %T, want *s3.Store", rawURL, st)
	}
	t.Cleanup(func() { s.Close() })
	return s
}
