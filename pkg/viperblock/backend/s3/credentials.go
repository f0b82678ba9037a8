package s3

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/smithy-go/logging"
)

// credentialsCheck is how long credentials read from a file are used before
// the file is looked at again: a stat of the open file, and a read only when
// it changed (see the package doc). A variable so that tests can shorten it
// (a store copies it when it opens).
var credentialsCheck = 5 * time.Second

// maxCredentialsFile bounds what is read of a credentials file.
const maxCredentialsFile = 64 << 10

// fileCredentials reads an env-style credentials file (see the package doc)
// and follows its changes. Its errors and log messages name the file and the
// line, never the content.
type fileCredentials struct {
	path   string
	logger logging.Logger
	check  time.Duration // credentialsCheck when the store opened
	// reloads counts the reads that replaced good credentials with
	// different ones.
	reloads atomic.Uint64

	mu sync.Mutex // guards the fields below
	// good is the last set of credentials read successfully; its
	// AccessKeyID is empty until the first one.
	good aws.Credentials
	// seen is the file good came from, as it was when it was read.
	seen os.FileInfo
	// force makes the next Retrieve read the file even if it looks
	// unchanged (set after an authentication failure).
	force bool
	// failing is set while the file cannot be read or parsed and good
	// credentials are used instead; it keeps the warning to one per spell.
	failing bool
}

func newFileCredentials(path string, logger logging.Logger) *fileCredentials {
	if logger == nil {
		logger = logging.Nop{}
	}
	return &fileCredentials{path: path, logger: logger, check: credentialsCheck}
}

// Retrieve implements aws.CredentialsProvider. Once the file has been read
// successfully it never fails: a missing, unreadable or half-written file
// keeps the last good credentials (and is looked at again at the next
// check).
func (f *fileCredentials) Retrieve(context.Context) (aws.Credentials, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	creds, err := f.load()
	if err != nil {
		if f.good.AccessKeyID == "" {
			return aws.Credentials{}, err
		}
		if !f.failing {
			f.logger.Logf(logging.Warn, "%v; keeping the credentials read before", err)
			f.failing = true
		}
		creds = f.good
	} else if f.failing {
		f.logger.Logf(logging.Warn, "viperblock/backend/s3: credentials file %s is readable again", f.path)
		f.failing = false
	}
	creds.Source = "viperblock credentials_file"
	creds.CanExpire = true
	creds.Expires = time.Now().Add(f.check)
	return creds, nil
}

// load returns the file's credentials, reading it only if it changed since
// the last good read or a read is forced. It updates good on success.
func (f *fileCredentials) load() (aws.Credentials, error) {
	fh, err := os.Open(f.path)
	if err != nil {
		return aws.Credentials{}, fmt.Errorf("viperblock/backend/s3: credentials file: %w", err)
	}
	defer fh.Close()
	// The identity of the file opened, not of the path: a rename between a
	// stat of the path and the read would pair one file's identity with the
	// other's content.
	fi, err := fh.Stat()
	if err != nil {
		return aws.Credentials{}, fmt.Errorf("viperblock/backend/s3: credentials file: %w", err)
	}
	if !f.force && f.seen != nil && sameVersion(f.seen, fi) {
		return f.good, nil
	}
	b, err := io.ReadAll(io.LimitReader(fh, maxCredentialsFile+1))
	if err != nil {
		return aws.Credentials{}, fmt.Errorf("viperblock/backend/s3: credentials file: %w", err)
	}
	if len(b) > maxCredentialsFile {
		return aws.Credentials{}, fmt.Errorf("viperblock/backend/s3: credentials file %s: larger than %d bytes", f.path, maxCredentialsFile)
	}
	creds, err := parseCredentials(b)
	if err != nil {
		return aws.Credentials{}, fmt.Errorf("viperblock/backend/s3: credentials file %s: %w", f.path, err)
	}
	if f.good.AccessKeyID != "" && !sameCredentials(f.good, creds) {
		f.reloads.Add(1)
		f.logger.Logf(logging.Debug, "viperblock/backend/s3: credentials file %s changed; using the new credentials", f.path)
	}
	f.good, f.seen, f.force = creds, fi, false
	return creds, nil
}

// invalidate makes the next Retrieve read the file whatever its stat says.
func (f *fileCredentials) invalidate() {
	f.mu.Lock()
	f.force = true
	f.mu.Unlock()
}

// sameVersion reports whether two stats are of the same file, unchanged:
// the same inode (a rename swaps it), size and modification time (an
// in-place rewrite changes them).
func sameVersion(a, b os.FileInfo) bool {
	return os.SameFile(a, b) && a.Size() == b.Size() && a.ModTime().Equal(b.ModTime())
}

func sameCredentials(a, b aws.Credentials) bool {
	return a.AccessKeyID == b.AccessKeyID && a.SecretAccessKey == b.SecretAccessKey && a.SessionToken == b.SessionToken
}

func parseCredentials(b []byte) (aws.Credentials, error) {
	var c aws.Credentials
	sc := bufio.NewScanner(bytes.NewReader(b))
	for line := 1; sc.Scan(); line++ {
		l := strings.TrimSpace(sc.Text())
		if l == "" || l[0] == '#' {
			continue
		}
		l = strings.TrimPrefix(l, "export ")
		k, v, ok := strings.Cut(l, "=")
		if !ok {
			return c, fmt.Errorf("line %d: expected KEY=VALUE", line)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
			v = v[1 : len(v)-1]
		}
		switch k {
		case "AWS_ACCESS_KEY_ID":
			c.AccessKeyID = v
		case "AWS_SECRET_ACCESS_KEY":
			c.SecretAccessKey = v
		case "AWS_SESSION_TOKEN":
			c.SessionToken = v
		}
	}
	if err := sc.Err(); err != nil {
		return c, err
	}
	if c.AccessKeyID == "" || c.SecretAccessKey == "" {
		return c, fmt.Errorf("needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
	}
	return c, nil
}

// ---- retry after an authentication failure ----

// authCodes are the S3 error codes that say the request's credentials were
// not accepted.
var authCodes = map[string]bool{
	"InvalidAccessKeyId":    true,
	"SignatureDoesNotMatch": true,
	"ExpiredToken":          true,
	"InvalidToken":          true,
	"TokenRefreshRequired":  true,
	"AccessDenied":          true,
}

// isAuthError reports whether S3 refused the credentials (or the rights
// they carry): one of authCodes, or any 403, which is all a HEAD request
// gets (it has no error body).
func isAuthError(err error) bool {
	code, status := errInfo(err)
	return authCodes[code] || status == http.StatusForbidden
}

// authRetryError is an authentication failure after which the credentials
// were re-read: the SDK's retryer repeats the attempt, which signs with
// them.
type authRetryError struct{ err error }

func (e *authRetryError) Error() string        { return e.err.Error() }
func (e *authRetryError) Unwrap() error        { return e.err }
func (e *authRetryError) RetryableError() bool { return true }

// retryAuth decides, after a failed attempt of call c, whether the
// credentials should be re-read and the attempt repeated: once per call,
// and only for credentials from a file. It returns the error the attempt
// ends with.
func (s *Store) retryAuth(ctx context.Context, c *call, err error) error {
	if s.fileCreds == nil || c == nil || c.authRetried || ctx.Err() != nil || !isAuthError(err) {
		return err
	}
	var ae *authRetryError
	if errors.As(err, &ae) {
		return err
	}
	c.authRetried = true
	s.authRetries.Add(1)
	s.fileCreds.invalidate()
	s.credsCache.Invalidate()
	return &authRetryError{err}
}
