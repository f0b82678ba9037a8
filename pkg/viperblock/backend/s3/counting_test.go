package s3_test

import (
	"context"
	"testing"

	"github.com/viperblock/viperblock-csi/internal/testutil/faultproxy"
	"github.com/viperblock/viperblock-csi/internal/testutil/s3server"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

// TestCountedRetries: the retries the S3 store makes inside one request
// reach the counting wrapper's RequestStats, under the request's operation.
func TestCountedRetries(t *testing.T) {
	t.Parallel()
	srv := s3server.Start(t)
	p := faultproxy.Start(t, srv.Endpoint, faultproxy.Options{Match: onlyGets})
	s, st := backend.Count(faultStore(t, srv, p, nil))
	ctx := context.Background()
	if err := s.Put(ctx, "obj", []byte("data")); err != nil {
		t.Fatal(err)
	}
	p.Force(faultproxy.Error500, 2)
	if got, _, err := s.Get(ctx, "obj"); err != nil || string(got) != "data" {
		t.Fatalf("Get after 2 faults: %q, %v", got, err)
	}
	ops := st.Snapshot()
	if g := ops[backend.OpGet]; g.OK != 1 || g.Errors != 0 || g.Retries != 2 {
		t.Errorf("get: ok %d errors %d retries %d; want 1, 0, 2", g.OK, g.Errors, g.Retries)
	}
	if g := ops[backend.OpPut]; g.OK != 1 || g.Retries != 0 {
		t.Errorf("put: ok %d retries %d; want 1, 0", g.OK, g.Retries)
	}
}
