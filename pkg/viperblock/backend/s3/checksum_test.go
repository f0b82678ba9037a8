package s3_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/viperblock/viperblock-csi/internal/testutil/s3server"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	s3store "github.com/viperblock/viperblock-csi/pkg/viperblock/backend/s3"
)

// flipTransport flips one byte of the body of the PUTs it is told to, after
// the store has computed the body's checksum: a body damaged on the way.
type flipTransport struct {
	flip atomic.Bool
	n    atomic.Int32 // PUTs damaged
}

func (f *flipTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method == http.MethodPut && f.flip.Load() && r.Body != nil {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			return nil, err
		}
		r.Body.Close()
		if len(b) > 0 {
			b[len(b)/2] ^= 0x01
			f.n.Add(1)
		}
		r.Body = io.NopCloser(bytes.NewReader(b))
		r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
	}
	return http.DefaultTransport.RoundTrip(r)
}

// TestCorruptBodyRefused: a Put or PutIf whose body is damaged on the way
// fails, and the server stores nothing.
func TestCorruptBodyRefused(t *testing.T) {
	srv := s3server.Start(t)
	ctx := context.Background()
	t.Setenv("AWS_CA_BUNDLE", "") // a custom HTTP client takes no CA bundle
	tr := &flipTransport{}
	s, err := s3store.New(ctx, s3store.Config{
		Bucket: srv.Bucket, Prefix: "sum", Endpoint: srv.Endpoint, Region: s3server.Region, PathStyle: true,
		CredentialsFile: srv.CredentialsFile, MaxAttempts: 2, HTTPClient: &http.Client{Transport: tr},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	data := bytes.Repeat([]byte("viperblock"), 100000)
	if err := s.Put(ctx, "good", data); err != nil {
		t.Fatalf("an intact put failed: %v", err)
	}
	tr.flip.Store(true)
	if err := s.Put(ctx, "bad", data); err == nil {
		t.Fatal("a put with a damaged body succeeded")
	}
	if _, err := s.PutIf(ctx, "badif", data, ""); err == nil {
		t.Fatal("a conditional put with a damaged body succeeded")
	}
	if tr.n.Load() < 2 {
		t.Fatalf("only %d puts were damaged", tr.n.Load())
	}
	tr.flip.Store(false)
	for _, k := range []string{"bad", "badif"} {
		if _, _, err := s.Get(ctx, k); !errors.Is(err, backend.ErrNotFound) {
			t.Fatalf("%s after a refused put: %v, want not found", k, err)
		}
	}
	got, _, err := s.Get(ctx, "good")
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("good: %v", err)
	}
}
