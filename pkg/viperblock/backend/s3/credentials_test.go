package s3_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/smithy-go/logging"

	s3store "github.com/viperblock/viperblock-csi/pkg/viperblock/backend/s3"
)

// authServer is a fake S3 endpoint that accepts requests signed with the
// access key IDs in valid and refuses the others as S3 does: 403 with the
// XML error InvalidAccessKeyId (no body for HEAD). It does not check
// signatures. Accepted PUTs store nothing; GETs and HEADs answer "data".
type authServer struct {
	*httptest.Server
	mu    sync.Mutex
	valid map[string]bool
	seen  []string // access key ID of each request, in order
}

func newAuthServer(t *testing.T, valid ...string) *authServer {
	a := &authServer{valid: map[string]bool{}}
	for _, k := range valid {
		a.valid[k] = true
	}
	a.Server = httptest.NewServer(http.HandlerFunc(a.serve))
	t.Cleanup(a.Close)
	return a
}

func (a *authServer) setValid(keys ...string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.valid = map[string]bool{}
	for _, k := range keys {
		a.valid[k] = true
	}
}

func (a *authServer) requests() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.seen...)
}

// accessKeyID extracts the key from "AWS4-HMAC-SHA256 Credential=KEY/date/...".
func accessKeyID(r *http.Request) string {
	_, rest, _ := strings.Cut(r.Header.Get("Authorization"), "Credential=")
	k, _, _ := strings.Cut(rest, "/")
	return k
}

func (a *authServer) serve(w http.ResponseWriter, r *http.Request) {
	key := accessKeyID(r)
	a.mu.Lock()
	a.seen = append(a.seen, key)
	ok := a.valid[key]
	a.mu.Unlock()
	if !ok {
		w.Header().Set("Content-Type", "application/xml")
		w.WriteHeader(http.StatusForbidden)
		if r.Method != http.MethodHead {
			fmt.Fprint(w, `<?xml version="1.0" encoding="UTF-8"?>`+
				`<Error><Code>InvalidAccessKeyId</Code><Message>The AWS Access Key Id you provided does not exist in our records.</Message>`+
				`<RequestId>fake</RequestId></Error>`)
		}
		return
	}
	switch r.Method {
	case http.MethodPut:
		w.Header().Set("ETag", `"e"`)
	case http.MethodGet, http.MethodHead:
		w.Header().Set("ETag", `"e"`)
		w.Header().Set("Content-Length", "4")
		if r.Method == http.MethodGet {
			fmt.Fprint(w, "data")
		}
	}
}

// logRecorder is a logging.Logger that keeps what it is given.
type logRecorder struct {
	mu    sync.Mutex
	lines []string
}

func (l *logRecorder) Logf(c logging.Classification, format string, v ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, string(c)+" "+fmt.Sprintf(format, v...))
}

func (l *logRecorder) get() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

func credsContent(key, secret string) string {
	return fmt.Sprintf("AWS_ACCESS_KEY_ID=%s\nAWS_SECRET_ACCESS_KEY=%s\n", key, secret)
}

// replaceFile writes content to a temporary file and renames it over path,
// as an atomic writer does.
func replaceFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// rewriteFile rewrites path in place (same inode).
func rewriteFile(t *testing.T, path, content string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(content); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func newAuthStore(t *testing.T, endpoint, credsFile string, logger logging.Logger) *s3store.Store {
	t.Helper()
	s, err := s3store.New(context.Background(), s3store.Config{
		Bucket:          "b",
		Endpoint:        endpoint,
		Region:          "us-east-1",
		PathStyle:       true,
		CredentialsFile: credsFile,
		MaxAttempts:     3,
		MaxBackoff:      10 * time.Millisecond,
		Logger:          logger,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestCredentialsRetryOnRefusal rotates the credentials file and revokes
// the old key before the store's next check: the first attempt of each
// operation kind after that is refused, the file is read again, and the
// repeated attempt succeeds with the new key.
func TestCredentialsRetryOnRefusal(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		write func(t *testing.T, path, content string)
	}{
		{"rename", replaceFile},
		{"in-place", rewriteFile},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := newAuthServer(t, "AKIDOLD")
			path := filepath.Join(t.TempDir(), "creds.env")
			replaceFile(t, path, credsContent("AKIDOLD", "SeCrEtOlD"))
			logs := &logRecorder{}
			s := newAuthStore(t, srv.URL, path, logs)
			ctx := context.Background()
			if err := s.Put(ctx, "k", []byte("v")); err != nil {
				t.Fatalf("Put with the first key: %v", err)
			}
			// The default check interval (5 s) has not passed: only the
			// refusal can make the store read the file.
			tc.write(t, path, credsContent("AKIDNEW", "SeCrEtNeW"))
			srv.setValid("AKIDNEW")
			ops := []struct {
				name string
				fn   func() error
			}{
				{"Put", func() error { return s.Put(ctx, "k", []byte("v")) }},
				{"PutIf", func() error { _, err := s.PutIf(ctx, "k", []byte("v"), `"e"`); return err }},
				{"Get", func() error { _, _, err := s.Get(ctx, "k"); return err }},
				{"GetRange0", func() error { _, err := s.GetRange(ctx, "k", 0, 0); return err }}, // HEAD: 403 without a body
			}
			for i, op := range ops {
				if i > 0 {
					srv.setValid("AKIDOLD") // the store now holds AKIDNEW; make it fail again
					tc.write(t, path, credsContent("AKIDOLD", "SeCrEtOlD"))
					if err := op.fn(); err != nil {
						t.Fatalf("%s back to the first key: %v", op.name, err)
					}
					srv.setValid("AKIDNEW")
					tc.write(t, path, credsContent("AKIDNEW", "SeCrEtNeW"))
				}
				before := len(srv.requests())
				if err := op.fn(); err != nil {
					t.Fatalf("%s after the rotation: %v", op.name, err)
				}
				got := srv.requests()[before:]
				if want := []string{"AKIDOLD", "AKIDNEW"}; !equal(got, want) {
					t.Errorf("%s: requests signed with %v, want %v", op.name, got, want)
				}
			}
			st := s.Stats()
			if want := uint64(2*len(ops) - 1); st.AuthRetries != want || st.CredentialReloads != want {
				t.Errorf("Stats: AuthRetries %d, CredentialReloads %d; want %d each", st.AuthRetries, st.CredentialReloads, want)
			}
			for _, l := range logs.get() {
				if strings.Contains(l, "SeCrEt") || strings.Contains(l, "AKID") {
					t.Errorf("log repeats credentials: %q", l)
				}
			}
		})
	}
}

func equal(a, b []string) bool {
	return strings.Join(a, ",") == strings.Join(b, ",")
}

// TestCredentialsRefusedTwice: when the re-read credentials are refused too,
// the operation fails after exactly one repeat, with S3's error.
func TestCredentialsRefusedTwice(t *testing.T) {
	t.Parallel()
	srv := newAuthServer(t /* nothing valid */)
	path := filepath.Join(t.TempDir(), "creds.env")
	replaceFile(t, path, credsContent("AKIDBAD", "SeCrEtBaD"))
	s := newAuthStore(t, srv.URL, path, nil)
	err := s.Put(context.Background(), "k", []byte("v"))
	if err == nil || !strings.Contains(err.Error(), "InvalidAccessKeyId") {
		t.Fatalf("Put with a refused key: %v; want InvalidAccessKeyId", err)
	}
	if strings.Contains(err.Error(), "SeCrEt") {
		t.Errorf("error repeats the secret: %v", err)
	}
	if n := len(srv.requests()); n != 2 {
		t.Errorf("%d requests, want 2 (the attempt and one repeat)", n)
	}
	if st := s.Stats(); st.AuthRetries != 1 || st.Retries != 1 {
		t.Errorf("Stats: AuthRetries %d, Retries %d; want 1 each", st.AuthRetries, st.Retries)
	}
	// Each operation gets its own repeat.
	if err := s.Put(context.Background(), "k", []byte("v")); err == nil {
		t.Fatal("second Put succeeded")
	}
	if n := len(srv.requests()); n != 4 {
		t.Errorf("%d requests after two Puts, want 4", n)
	}
}

// TestCredentialsCheck: without any refusal, a changed file is picked up at
// the next check, whether it was renamed over or rewritten in place; a
// missing or half-written file keeps the credentials in use, with one
// warning, until it is whole again.
func TestCredentialsCheck(t *testing.T) {
	// Not parallel: it shortens the package's check interval.
	s3store.SetCredentialsCheck(t, 20*time.Millisecond)
	srv := newAuthServer(t, "AKIDONE", "AKIDTWO", "AKIDTHREE")
	dir := t.TempDir()
	path := filepath.Join(dir, "creds.env")
	replaceFile(t, path, credsContent("AKIDONE", "SeCrEtOnE"))
	logs := &logRecorder{}
	s := newAuthStore(t, srv.URL, path, logs)
	ctx := context.Background()
	// putWith puts after the check interval and reports the key it signed with.
	putWith := func() string {
		t.Helper()
		time.Sleep(30 * time.Millisecond)
		if err := s.Put(ctx, "k", []byte("v")); err != nil {
			t.Fatalf("Put: %v", err)
		}
		r := srv.requests()
		return r[len(r)-1]
	}
	if k := putWith(); k != "AKIDONE" {
		t.Fatalf("signed with %s, want AKIDONE", k)
	}
	replaceFile(t, path, credsContent("AKIDTWO", "SeCrEtTwO"))
	if k := putWith(); k != "AKIDTWO" {
		t.Fatalf("after a rename: signed with %s, want AKIDTWO", k)
	}
	rewriteFile(t, path, credsContent("AKIDTHREE", "SeCrEtThReE"))
	if k := putWith(); k != "AKIDTHREE" {
		t.Fatalf("after an in-place rewrite: signed with %s, want AKIDTHREE", k)
	}

	// Broken files: the credentials in use stay.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if k := putWith(); k != "AKIDTHREE" {
			t.Fatalf("file missing: signed with %s, want AKIDTHREE", k)
		}
	}
	replaceFile(t, path, "AWS_ACCESS_KEY_ID=AKIDONE\n") // cut short before the secret
	if k := putWith(); k != "AKIDTHREE" {
		t.Fatalf("file half-written: signed with %s, want AKIDTHREE", k)
	}
	replaceFile(t, path, "AWS_ACCESS_KEY_ID=AKIDONE\nAWS_SECRET_ACCESS_KEY=SeCrEtOnE\n")
	if k := putWith(); k != "AKIDONE" {
		t.Fatalf("file whole again: signed with %s, want AKIDONE", k)
	}

	if st := s.Stats(); st.CredentialReloads != 3 || st.AuthRetries != 0 {
		t.Errorf("Stats: CredentialReloads %d, AuthRetries %d; want 3, 0", st.CredentialReloads, st.AuthRetries)
	}
	var warns []string
	for _, l := range logs.get() {
		if strings.Contains(l, "SeCrEt") || strings.Contains(l, "AKID") {
			t.Errorf("log repeats credentials: %q", l)
		}
		if strings.HasPrefix(l, "WARN ") {
			warns = append(warns, l)
		}
	}
	// One warning for the spell of missing and half-written files, one
	// when it is readable again.
	if len(warns) != 2 || !strings.Contains(warns[0], "no such file") || !strings.Contains(warns[1], "readable again") {
		t.Errorf("warnings: %q; want one about the missing file, then one that it is readable again", warns)
	}
}

// TestCredentialsFileNeverGood: a store cannot open without credentials,
// and says which file is at fault.
func TestCredentialsFileNeverGood(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "creds.env")
	replaceFile(t, path, "AWS_ACCESS_KEY_ID=AKIDHALF\n")
	_, err := s3store.New(context.Background(), s3store.Config{Bucket: "b", CredentialsFile: path})
	if err == nil || !strings.Contains(err.Error(), path) || strings.Contains(err.Error(), "AKIDHALF") {
		t.Fatalf("New with a half-written file: %v; want an error naming the file but not its content", err)
	}
}
