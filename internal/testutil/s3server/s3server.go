// Package s3server runs a real S3 server, versitygw with its posix backend,
// for tests:
//
//	srv := s3server.Start(t)
//	store, err := backend.Open(ctx, srv.URL("my-prefix"))
//
// Each Start launches its own versitygw child process on a free 127.0.0.1
// port over a fresh temporary directory, creates one bucket, writes a
// credentials file for it, and stops the process when the test ends.
//
// The versitygw binary is looked up on PATH and in $(go env GOPATH)/bin
// (`make deps` installs it). When it is missing the test is skipped, or
// fails under VB_REQUIRE (see internal/testutil).
package s3server

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/viperblock/viperblock-csi/internal/testutil"
)

// Region is the region versitygw is started with.
const Region = "us-east-1"

// Server is one running versitygw.
type Server struct {
	// Endpoint is the server's base URL, http://127.0.0.1:PORT.
	Endpoint string
	// Bucket is the bucket Start created.
	Bucket string
	// AccessKey and SecretKey are the root account's credentials.
	AccessKey, SecretKey string
	// CredentialsFile holds the credentials in the env-style format the s3
	// store's credentials_file= parameter reads.
	CredentialsFile string
	// Dir is the posix backend's root directory (buckets are its
	// subdirectories).
	Dir string

	args     []string // extra versitygw options
	cmd      *exec.Cmd
	out      *syncBuffer
	stopOnce sync.Once
	exited   chan struct{}
}

// Binary returns the path of the versitygw binary, or "" if there is none.
func Binary() string {
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p
	}
	var dirs []string
	if gp := os.Getenv("GOPATH"); gp != "" {
		dirs = append(dirs, filepath.SplitList(gp)...)
	} else if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		dirs = append(dirs, filepath.SplitList(strings.TrimSpace(string(out)))...)
	}
	if home, err := os.UserHomeDir(); err == nil {
		dirs = append(dirs, filepath.Join(home, "go"))
	}
	if gb := os.Getenv("GOBIN"); gb != "" {
		if p := filepath.Join(gb, "versitygw"); isExec(p) {
			return p
		}
	}
	for _, d := range dirs {
		if p := filepath.Join(d, "bin", "versitygw"); isExec(p) {
			return p
		}
	}
	return ""
}

func isExec(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}

// Start starts a server with one empty bucket; it stops when t ends.
func Start(t testing.TB) *Server {
	t.Helper()
	return start(t, nil)
}

// start is Start with extra versitygw options (before the backend).
func start(t testing.TB, args []string) *Server {
	t.Helper()
	bin := Binary()
	if bin == "" {
		testutil.Skip(t, "versitygw", "versitygw not found on PATH or in $(go env GOPATH)/bin (`make deps` installs the pinned version)")
	}
	tmp := t.TempDir()
	s := &Server{
		Bucket:    "viperblock-test",
		AccessKey: "vbtest" + randHex(6),
		SecretKey: randHex(20),
		Dir:       filepath.Join(tmp, "root"),
		args:      args,
	}
	if err := os.Mkdir(s.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	s.CredentialsFile = filepath.Join(tmp, "credentials.env")
	creds := fmt.Sprintf("AWS_ACCESS_KEY_ID=%s\nAWS_SECRET_ACCESS_KEY=%s\n", s.AccessKey, s.SecretKey)
	if err := os.WriteFile(s.CredentialsFile, []byte(creds), 0o600); err != nil {
		t.Fatal(err)
	}
	// The port is picked free and then handed to versitygw, so another
	// process can take it in between: versitygw then exits, or something
	// else answers and the bucket cannot be made. Either way, try again.
	var lastErr error
	for try := 0; try < 3; try++ {
		if lastErr = s.launch(bin); lastErr != nil {
			continue
		}
		if lastErr = s.CreateBucket(context.Background(), s.Bucket); lastErr == nil {
			break
		}
		lastErr = fmt.Errorf("create bucket: %w\n%s", lastErr, s.out.String())
		s.Stop()
	}
	if lastErr != nil {
		t.Fatalf("s3server: %v", lastErr)
	}
	t.Cleanup(s.Stop)
	return s
}

// launch starts versitygw on a free port and waits until it answers.
func (s *Server) launch(bin string) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	s.Endpoint = "http://" + addr
	s.out = &syncBuffer{}
	s.stopOnce = sync.Once{} // an earlier try's server is stopped already
	// Credentials go through the environment, not argv.
	args := append([]string{"--port", addr, "--keep-alive", "--quiet"}, s.args...)
	cmd := exec.Command(bin, append(args, "posix", s.Dir)...)
	cmd.Env = append(os.Environ(),
		"ROOT_ACCESS_KEY_ID="+s.AccessKey,
		"ROOT_SECRET_ACCESS_KEY="+s.SecretKey,
		"VGW_REGION="+Region,
	)
	cmd.Stdout, cmd.Stderr = s.out, s.out
	setDeathSignal(cmd)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", bin, err)
	}
	s.cmd = cmd
	s.exited = make(chan struct{})
	go func() { _ = cmd.Wait(); close(s.exited) }()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-s.exited:
			return fmt.Errorf("versitygw exited at startup: %s\n%s", cmd.ProcessState, s.out.String())
		default:
		}
		resp, err := http.Get(s.Endpoint + "/")
		if err == nil {
			resp.Body.Close()
			return nil // any HTTP answer (403 for an unsigned request) means it serves
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.Stop()
	return fmt.Errorf("versitygw did not answer on %s within 20s\n%s", addr, s.out.String())
}

// Stop kills the server (Start registers it with t.Cleanup).
func (s *Server) Stop() {
	s.stopOnce.Do(func() {
		if s.cmd == nil || s.cmd.Process == nil {
			return
		}
		_ = s.cmd.Process.Kill()
		<-s.exited
	})
}

// URL returns the s3:// store URL for prefix (which may be empty) in the
// server's bucket, with credentials_file=. Extra query parameters (such as
// "max_attempts=3") are appended as given.
func (s *Server) URL(prefix string, extra ...string) string {
	return StoreURL(s.Bucket, prefix, s.Endpoint, s.CredentialsFile, extra...)
}

// StoreURL builds an s3:// store URL for an endpoint (for example a proxy in
// front of the server).
func StoreURL(bucket, prefix, endpoint, credentialsFile string, extra ...string) string {
	q := url.Values{}
	q.Set("endpoint", endpoint)
	q.Set("region", Region)
	q.Set("path_style", "true")
	q.Set("credentials_file", credentialsFile)
	u := "s3://" + bucket
	if prefix != "" {
		u += "/" + strings.Trim(prefix, "/")
	}
	u += "?" + q.Encode()
	for _, e := range extra {
		u += "&" + e
	}
	return u
}

// Client returns a plain SDK client for the server, for setting up and
// inspecting tests.
func (s *Server) Client() *s3.Client {
	return s3.New(s3.Options{
		Region:       Region,
		BaseEndpoint: aws.String(s.Endpoint),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(s.AccessKey, s.SecretKey, ""),
	})
}

// CreateBucket creates another bucket.
func (s *Server) CreateBucket(ctx context.Context, name string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, err := s.Client().CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(name)})
	return err
}

// Log returns what the server printed so far.
func (s *Server) Log() string { return s.out.String() }

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	addr, ok := l.Addr().(*net.TCPAddr)
	if !ok {
		return 0, errors.New("not a TCP address")
	}
	return addr.Port, nil
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.b.Len() > 1<<20 {
		return len(p), nil // keep the first MiB
	}
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
