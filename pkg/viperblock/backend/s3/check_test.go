package s3_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/viperblock/viperblock-csi/internal/testutil/s3server"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	s3store "github.com/viperblock/viperblock-csi/pkg/viperblock/backend/s3"
)

// The compatibility self-test passes against the real S3 server and
// leaves nothing behind.
func TestCheckVersitygw(t *testing.T) {
	t.Parallel()
	srv := s3server.Start(t)
	ctx := context.Background()
	s, err := backend.Open(ctx, srv.URL("vols"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rep, err := backend.Check(ctx, s)
	if err != nil {
		t.Fatalf("Check: %v\n%+v", err, rep)
	}
	if !rep.OK() {
		t.Fatalf("report not OK: %+v", rep)
	}
	left, err := srv.Client().ListObjectsV2(ctx, &awss3.ListObjectsV2Input{Bucket: aws.String(srv.Bucket)})
	if err != nil {
		t.Fatal(err)
	}
	if len(left.Contents) != 0 {
		t.Errorf("%d objects left in the bucket, first %s", len(left.Contents), aws.ToString(left.Contents[0].Key))
	}
}

// stripProxy forwards to an S3 server with the conditional headers the
// test asks it to remove taken off every PUT, and signs the request again
// (they are signed headers), so the server sees a valid unconditional
// PUT: a store that ignores conditional writes, as far as the client can
// tell.
func stripProxy(t *testing.T, srv *s3server.Server, strip ...string) (string, *atomic.Int64) {
	t.Helper()
	up, err := url.Parse(srv.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	creds := aws.Credentials{AccessKeyID: srv.AccessKey, SecretAccessKey: srv.SecretKey}
	signer := v4.NewSigner(func(o *v4.SignerOptions) { o.DisableURIPathEscaping = true })
	var stripped atomic.Int64
	rp := &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) {
		pr.SetURL(up)
		r := pr.Out
		// Keep the Host header the client signed.
		r.Host = pr.In.Host
		if r.Method != http.MethodPut {
			return
		}
		removed := false
		for _, h := range strip {
			if r.Header.Get(h) != "" {
				r.Header.Del(h)
				removed = true
			}
		}
		if !removed {
			return
		}
		stripped.Add(1)
		r.Header.Del("Authorization")
		err := signer.SignHTTP(r.Context(), creds, r, r.Header.Get("X-Amz-Content-Sha256"), "s3", s3server.Region, time.Now())
		if err != nil {
			t.Errorf("sign again: %v", err)
		}
	}}
	ps := httptest.NewServer(rp)
	t.Cleanup(ps.Close)
	return ps.URL, &stripped
}

// A store that ignores If-None-Match or If-Match (here: a proxy that
// removes them) fails the self-test, naming the check, with
// ErrIncompatible; the test objects are removed all the same.
func TestCheckRefusesStoreIgnoringConditions(t *testing.T) {
	t.Parallel()
	srv := s3server.Start(t)
	for _, tc := range []struct {
		strip    []string
		failedAt string
	}{
		{[]string{"If-None-Match"}, backend.CheckIfNoneMatch},
		{[]string{"If-Match"}, backend.CheckIfMatchStale},
		{[]string{"If-Match", "If-None-Match"}, backend.CheckIfNoneMatch},
	} {
		t.Run(strings.Join(tc.strip, "+"), func(t *testing.T) {
			endpoint, stripped := stripProxy(t, srv, tc.strip...)
			ctx := context.Background()
			prefix := "strip-" + strings.ToLower(strings.Join(tc.strip, "-"))
			s, err := s3store.New(ctx, s3store.Config{Bucket: srv.Bucket, Prefix: prefix, Endpoint: endpoint,
				Region: s3server.Region, PathStyle: true, CredentialsFile: srv.CredentialsFile, MaxAttempts: 2})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			rep, err := backend.Check(ctx, s)
			if !errors.Is(err, backend.ErrIncompatible) || !strings.Contains(err.Error(), tc.failedAt) {
				t.Fatalf("Check = %v, want ErrIncompatible naming %s\nreport %+v", err, tc.failedAt, rep)
			}
			t.Logf("refused: %v", err)
			if f := rep.Failed(); f == nil || f.Name != tc.failedAt {
				t.Errorf("failed check %+v, want %s", f, tc.failedAt)
			}
			if stripped.Load() == 0 {
				t.Error("the proxy stripped nothing")
			}
			left, err := s.List(ctx, "")
			if err != nil || len(left) > 0 {
				t.Errorf("left behind: %q, %v", left, err)
			}
		})
	}
}
