package s3_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"

	"github.com/viperblock/viperblock-csi/internal/testutil/s3server"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend/backendtest"
	s3store "github.com/viperblock/viperblock-csi/pkg/viperblock/backend/s3"
)

func open(t *testing.T, rawURL string) *s3store.Store {
	t.Helper()
	st, err := backend.Open(context.Background(), rawURL)
	if err != nil {
		t.Fatalf("backend.Open: %v", err)
	}
	s, ok := st.(*s3store.Store)
	if !ok {
		t.Fatalf("backend.Open returned %T, want *s3.Store", st)
	}
	return s
}

// TestConformance runs the suite with each subtest under its own prefix.
func TestConformance(t *testing.T) {
	t.Parallel()
	srv := s3server.Start(t)
	var n atomic.Int64
	backendtest.Run(t, func(t *testing.T) backend.Store {
		return open(t, srv.URL(fmt.Sprintf("suite/t%d", n.Add(1))))
	})
}

// TestConformanceNoPrefix runs the suite with each subtest in its own bucket
// and no prefix.
func TestConformanceNoPrefix(t *testing.T) {
	t.Parallel()
	srv := s3server.Start(t)
	var n atomic.Int64
	backendtest.Run(t, func(t *testing.T) backend.Store {
		bucket := fmt.Sprintf("bucket-%d", n.Add(1))
		if err := srv.CreateBucket(context.Background(), bucket); err != nil {
			t.Fatal(err)
		}
		s, err := s3store.New(context.Background(), s3store.Config{
			Bucket:          bucket,
			Endpoint:        srv.Endpoint,
			Region:          s3server.Region,
			PathStyle:       true,
			CredentialsFile: srv.CredentialsFile,
		})
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

// TestVersitygwConditionalWrites checks the server itself, with the plain
// SDK: If-None-Match: * and If-Match on PutObject.
func TestVersitygwConditionalWrites(t *testing.T) {
	t.Parallel()
	srv := s3server.Start(t)
	ctx := context.Background()
	c := srv.Client()
	put := func(key, body string, ifMatch, ifNoneMatch *string) (string, error) {
		out, err := c.PutObject(ctx, &awss3.PutObjectInput{
			Bucket: &srv.Bucket, Key: &key, Body: strings.NewReader(body),
			IfMatch: ifMatch, IfNoneMatch: ifNoneMatch,
		})
		if err != nil {
			return "", err
		}
		return aws.ToString(out.ETag), nil
	}
	code := func(err error) string {
		var ae smithy.APIError
		if errors.As(err, &ae) {
			return ae.ErrorCode()
		}
		return fmt.Sprint(err)
	}
	star := aws.String("*")
	e1, err := put("k", "one", nil, star)
	if err != nil {
		t.Fatalf("If-None-Match: * on a new key: %v", err)
	}
	if _, err := put("k", "two", nil, star); code(err) != "PreconditionFailed" {
		t.Fatalf("If-None-Match: * on an existing key: %v; want PreconditionFailed", err)
	}
	e2, err := put("k", "two", aws.String(e1), nil)
	if err != nil {
		t.Fatalf("If-Match: current ETag: %v", err)
	}
	if _, err := put("k", "three", aws.String(e1), nil); code(err) != "PreconditionFailed" {
		t.Fatalf("If-Match: stale ETag: %v; want PreconditionFailed", err)
	}
	if _, err := put("missing", "x", aws.String(e2), nil); err == nil {
		t.Fatalf("If-Match on a missing key succeeded")
	} else {
		t.Logf("If-Match on a missing key: %s", code(err))
	}
	got, err := c.GetObject(ctx, &awss3.GetObjectInput{Bucket: &srv.Bucket, Key: aws.String("k")})
	if err != nil {
		t.Fatal(err)
	}
	defer got.Body.Close()
	if aws.ToString(got.ETag) != e2 {
		t.Fatalf("GetObject ETag %s, PutObject returned %s", aws.ToString(got.ETag), e2)
	}
}

func TestParseURL(t *testing.T) {
	good := []struct {
		url  string
		want s3store.Config
	}{
		{"s3://b", s3store.Config{Bucket: "b"}},
		{"s3://b/", s3store.Config{Bucket: "b"}},
		{"s3://b/p/q/", s3store.Config{Bucket: "b", Prefix: "p/q"}},
		{"s3://b/p?endpoint=http://127.0.0.1:7070&region=eu-west-1",
			s3store.Config{Bucket: "b", Prefix: "p", Endpoint: "http://127.0.0.1:7070", Region: "eu-west-1", PathStyle: true}},
		{"s3://b?endpoint=https://s3.example.com&path_style=false",
			s3store.Config{Bucket: "b", Endpoint: "https://s3.example.com"}},
		{"s3://b?path_style=1&credentials_file=/etc/creds&profile=x&max_attempts=3&timeout=5s&max_backoff=1s",
			s3store.Config{Bucket: "b", PathStyle: true, CredentialsFile: "/etc/creds", Profile: "x",
				MaxAttempts: 3, AttemptTimeout: 5 * time.Second, MaxBackoff: time.Second}},
	}
	for _, c := range good {
		u, err := url.Parse(c.url)
		if err != nil {
			t.Fatal(err)
		}
		got, err := s3store.ParseURL(u)
		if err != nil {
			t.Errorf("ParseURL(%s): %v", c.url, err)
			continue
		}
		if fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("ParseURL(%s) = %+v, want %+v", c.url, got, c.want)
		}
	}
	bad := []string{
		"s3://",
		"s3:///prefix",
		"s3://b?unknown=1",
		"s3://b?endpoint=http://x&endpoint=http://y",
		"s3://b?endpoint=ftp://x",
		"s3://b?endpoint=notaurl",
		"s3://b?path_style=maybe",
		"s3://b?max_attempts=0",
		"s3://b?max_attempts=x",
		"s3://b?timeout=-1s",
		"s3://b?timeout=5",
		"s3://b?max_backoff=0s",
		"s3://b?credentials_file=",
		"s3://b/../x",
		"s3://b/a//b",
		"s3://b/.hidden",
		"s3://b:9000/p",
		"s3://b#frag",
		"s3://AKIAEXAMPLE:SeCrEtVaLuE@b/p",
		"s3://b?endpoint=http://AKIAEXAMPLE:SeCrEtVaLuE@host",
	}
	for _, raw := range bad {
		_, err := backend.Open(context.Background(), raw)
		if !errors.Is(err, backend.ErrInvalidURL) {
			t.Errorf("Open(%q) error = %v; want ErrInvalidURL", raw, err)
			continue
		}
		if strings.Contains(err.Error(), "SeCrEt") || strings.Contains(err.Error(), "AKIAEXAMPLE") {
			t.Errorf("Open(%q) error repeats the credentials: %v", raw, err)
		}
	}
}

func TestCredentialsFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ctx := context.Background()
	ok := write("ok", "# comment\n\nexport AWS_ACCESS_KEY_ID=\"AKIAOK\"\nAWS_SECRET_ACCESS_KEY = 'SeCrEtOk'\nAWS_REGION=x\n")
	if _, err := s3store.New(ctx, s3store.Config{Bucket: "b", CredentialsFile: ok}); err != nil {
		t.Fatalf("good credentials file: %v", err)
	}
	for name, content := range map[string]string{
		"nosecret": "AWS_ACCESS_KEY_ID=AKIA\n",
		"garbage":  "AKIAGARBAGE SeCrEtGaRbAgE\n",
		"json":     `{"AWS_ACCESS_KEY_ID": "AKIAJSON", "AWS_SECRET_ACCESS_KEY": "SeCrEtJsOn"}`,
	} {
		_, err := s3store.New(ctx, s3store.Config{Bucket: "b", CredentialsFile: write(name, content)})
		if err == nil {
			t.Errorf("credentials file %s: no error", name)
			continue
		}
		if strings.Contains(err.Error(), "SeCrEt") || strings.Contains(err.Error(), "AKIA") {
			t.Errorf("credentials file %s: error repeats the content: %v", name, err)
		}
	}
	if _, err := s3store.New(ctx, s3store.Config{Bucket: "b", CredentialsFile: filepath.Join(dir, "missing")}); err == nil {
		t.Error("missing credentials file: no error")
	}
}

// TestCredentialsFromEnvironment uses the SDK's default chain.
func TestCredentialsFromEnvironment(t *testing.T) {
	srv := s3server.Start(t)
	t.Setenv("AWS_ACCESS_KEY_ID", srv.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", srv.SecretKey)
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	u := "s3://" + srv.Bucket + "/env?endpoint=" + url.QueryEscape(srv.Endpoint) + "&region=" + s3server.Region
	s := open(t, u)
	defer s.Close()
	ctx := context.Background()
	if err := s.Put(ctx, "k", []byte("v")); err != nil {
		t.Fatalf("Put with credentials from the environment: %v", err)
	}
	// Wrong credentials fail at once, not after retries, and are not ErrNotFound.
	t.Setenv("AWS_SECRET_ACCESS_KEY", "wrong")
	s2 := open(t, u)
	defer s2.Close()
	if _, _, err := s2.Get(ctx, "k"); err == nil || errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("Get with a wrong secret: %v; want an access error", err)
	}
	if st := s2.Stats(); st.Retries != 0 {
		t.Errorf("access error was retried %d times", st.Retries)
	}
}

func TestMissingBucketIsNotNotFound(t *testing.T) {
	t.Parallel()
	srv := s3server.Start(t)
	s := open(t, s3server.StoreURL("no-such-bucket", "", srv.Endpoint, srv.CredentialsFile))
	defer s.Close()
	ctx := context.Background()
	if _, _, err := s.Get(ctx, "k"); err == nil || errors.Is(err, backend.ErrNotFound) {
		t.Errorf("Get in a missing bucket: %v; want an error that is not ErrNotFound", err)
	}
	if _, err := s.List(ctx, ""); err == nil {
		t.Error("List in a missing bucket: no error")
	}
}

// TestPrefixIsolation: a store with a prefix sees only its own keys, and
// stores them under the prefix.
func TestPrefixIsolation(t *testing.T) {
	t.Parallel()
	srv := s3server.Start(t)
	ctx := context.Background()
	a := open(t, srv.URL("tenant-a/pool"))
	b := open(t, srv.URL("tenant-b"))
	root := open(t, srv.URL(""))
	for _, s := range []*s3store.Store{a, b, root} {
		defer s.Close()
	}
	if err := a.Put(ctx, "vol/manifest", []byte("a")); err != nil {
		t.Fatal(err)
	}
	if err := b.Put(ctx, "vol/manifest", []byte("b")); err != nil {
		t.Fatal(err)
	}
	if keys, err := a.List(ctx, ""); err != nil || fmt.Sprint(keys) != "[vol/manifest]" {
		t.Fatalf("a.List = %q, %v", keys, err)
	}
	if keys, err := root.List(ctx, ""); err != nil || fmt.Sprint(keys) != "[tenant-a/pool/vol/manifest tenant-b/vol/manifest]" {
		t.Fatalf("root.List = %q, %v", keys, err)
	}
	d, _, err := root.Get(ctx, "tenant-a/pool/vol/manifest")
	if err != nil || !bytes.Equal(d, []byte("a")) {
		t.Fatalf("root.Get = %q, %v", d, err)
	}
}

// TestCanceledContextNotRetried: the caller's cancellation ends the
// operation at once.
func TestCanceledContextNotRetried(t *testing.T) {
	t.Parallel()
	srv := s3server.Start(t)
	s := open(t, srv.URL("cancel"))
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Put(ctx, "k", []byte("v")); !errors.Is(err, context.Canceled) {
		t.Fatalf("Put with a canceled context: %v; want context.Canceled", err)
	}
	if st := s.Stats(); st.Retries != 0 {
		t.Fatalf("canceled request was retried: %+v", st)
	}
}
