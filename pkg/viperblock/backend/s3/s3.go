package s3

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/logging"
	"github.com/aws/smithy-go/middleware"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

// Defaults for Config fields left zero.
const (
	DefaultMaxAttempts    = 8
	DefaultAttemptTimeout = 60 * time.Second
	DefaultMaxBackoff     = 20 * time.Second
	DefaultRegion         = "us-east-1"
)

// Config configures a Store. Only Bucket is required.
type Config struct {
	Bucket string
	// Prefix, when not empty, is put before every key (with a '/').
	Prefix string
	// Endpoint is the S3 endpoint URL; empty means AWS.
	Endpoint string
	// Region is the signing region; empty means the AWS config chain's, else
	// DefaultRegion.
	Region string
	// PathStyle selects path-style addressing (http://host/bucket/key).
	PathStyle bool
	// Credentials, if set, is used instead of any other source.
	Credentials aws.CredentialsProvider
	// CredentialsFile names an env-style credentials file (see the package
	// doc).
	CredentialsFile string
	// Profile selects a shared config profile.
	Profile string
	// IMDS lets the default credential chain ask the EC2 instance metadata
	// service (169.254.169.254) for credentials. Off unless asked for
	// (URL parameter imds=true): elsewhere it only costs a timeout, and a
	// store should not reach out to addresses nobody configured.
	IMDS bool
	// MaxAttempts is the number of attempts per request (default 8).
	MaxAttempts int
	// AttemptTimeout bounds each attempt (default 60 s).
	AttemptTimeout time.Duration
	// MaxBackoff caps the delay between attempts (default 20 s).
	MaxBackoff time.Duration
	// OnRetry, if set, is called before each retried attempt with the S3
	// operation, the number of the attempt about to be made (2 or more) and
	// the error that ended the previous one. It must not block.
	OnRetry func(op string, attempt int, err error)
	// HTTPClient replaces the default HTTP client (tests).
	HTTPClient aws.HTTPClient
	// Logger receives the SDK's warnings (none by default). The SDK never
	// logs credentials; leave the SDK's ClientLogMode at its default so it
	// does not log requests either.
	Logger logging.Logger
}

// Stats are the store's request counters since it opened.
type Stats struct {
	// Attempts is the number of HTTP requests made.
	Attempts uint64
	// Retries is the number of attempts that repeated a failed one.
	Retries uint64
	// FailedAttempts is the number of attempts that ended in an error,
	// including final answers such as 404 and 412.
	FailedAttempts uint64
	// AmbiguousPutIfs is the number of PutIfs that failed their
	// precondition after a retry and were found to have been applied by an
	// earlier attempt (see the package doc).
	AmbiguousPutIfs uint64
	// CredentialReloads is the number of times the credentials file was
	// found to hold credentials different from those in use.
	CredentialReloads uint64
	// AuthRetries is the number of attempts that failed authentication and
	// were repeated with the credentials file read again (see the package
	// doc); they are counted in Retries too.
	AuthRetries uint64
}

// Store is a backend.Store on an S3 bucket.
type Store struct {
	client   *s3.Client
	bucket   string
	prefix   string // "" or ends in '/'
	cfg      Config
	idle     interface{ CloseIdleConnections() }
	attempts atomic.Uint64
	retries  atomic.Uint64
	failed   atomic.Uint64
	ambig    atomic.Uint64

	// fileCreds and credsCache are the credentials_file provider and the
	// cache in front of it; nil for other credential sources.
	fileCreds   *fileCredentials
	credsCache  *aws.CredentialsCache
	authRetries atomic.Uint64
}

var _ backend.Store = (*Store)(nil)

func init() {
	backend.Register("s3", func(ctx context.Context, u *url.URL) (backend.Store, error) {
		cfg, err := ParseURL(u)
		if err != nil {
			return nil, err
		}
		return New(ctx, cfg)
	})
}

// abortiveClose sets SO_LINGER 0 on the store's connections, so that
// closing one discards what the kernel has not sent yet (and resets the
// connection). A request given up on (its context ended: the caller was
// told it failed) while the store was unreachable would otherwise stay in
// the socket's send queue and be delivered, and applied, when the network
// came back: a write of a volume's owner landing after another owner took
// the volume over.
func abortiveClose(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = syscall.SetsockoptLinger(int(fd), syscall.SOL_SOCKET, syscall.SO_LINGER, &syscall.Linger{Onoff: 1, Linger: 0})
	})
	if err != nil {
		return err
	}
	return serr
}

// New opens a store. It makes no request to the server.
func New(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.Bucket == "" {
		return nil, fmt.Errorf("%w: s3: no bucket", backend.ErrInvalidURL)
	}
	prefix := strings.Trim(cfg.Prefix, "/")
	if prefix != "" {
		if err := backend.ValidateKey(prefix); err != nil {
			return nil, fmt.Errorf("%w: s3 prefix: %w", backend.ErrInvalidURL, err)
		}
		prefix += "/"
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = DefaultMaxAttempts
	}
	if cfg.AttemptTimeout <= 0 {
		cfg.AttemptTimeout = DefaultAttemptTimeout
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = DefaultMaxBackoff
	}
	s := &Store{bucket: cfg.Bucket, prefix: prefix, cfg: cfg}

	httpClient, ownClient := cfg.HTTPClient, cfg.HTTPClient == nil
	if ownClient {
		// A BuildableClient, so that the config loader can still apply
		// AWS_CA_BUNDLE and the like; frozen below.
		httpClient = awshttp.NewBuildableClient().WithTransportOptions(func(tr *http.Transport) {
			tr.MaxIdleConns = 256
			tr.MaxIdleConnsPerHost = 64
			tr.IdleConnTimeout = 90 * time.Second
		}).WithDialerOptions(func(d *net.Dialer) { d.Control = abortiveClose })
	}
	logger := cfg.Logger
	if logger == nil {
		logger = logging.Nop{}
	}
	opts := []func(*config.LoadOptions) error{
		config.WithHTTPClient(httpClient),
		config.WithLogger(logger),
		config.WithClientLogMode(0),
		config.WithEC2IMDSClientEnableState(imdsState(cfg.IMDS)),
		config.WithRetryer(func() aws.Retryer {
			return retry.NewStandard(func(o *retry.StandardOptions) {
				o.MaxAttempts = cfg.MaxAttempts
				o.MaxBackoff = cfg.MaxBackoff
				o.RateLimiter = ratelimit.None
				o.Retryables = append(o.Retryables, retry.IsErrorRetryableFunc(extraRetryable))
			})
		}),
	}
	if cfg.Region != "" {
		opts = append(opts, config.WithRegion(cfg.Region))
	}
	if cfg.Profile != "" {
		opts = append(opts, config.WithSharedConfigProfile(cfg.Profile))
	}
	switch {
	case cfg.Credentials != nil:
		opts = append(opts, config.WithCredentialsProvider(cfg.Credentials))
	case cfg.CredentialsFile != "":
		fc := newFileCredentials(cfg.CredentialsFile, cfg.Logger)
		if _, err := fc.Retrieve(ctx); err != nil {
			return nil, err
		}
		s.fileCreds, s.credsCache = fc, aws.NewCredentialsCache(fc)
		opts = append(opts, config.WithCredentialsProvider(s.credsCache))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("viperblock/backend/s3: load AWS config: %w", err)
	}
	if awsCfg.Region == "" {
		awsCfg.Region = DefaultRegion
	}
	if b, ok := awsCfg.HTTPClient.(*awshttp.BuildableClient); ok {
		awsCfg.HTTPClient = b.Freeze()
	}
	if ownClient {
		s.idle, _ = awsCfg.HTTPClient.(interface{ CloseIdleConnections() })
	}
	s.client = s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		o.UsePathStyle = cfg.PathStyle
		// Ranged reads carry no whole-object checksum; do not log that.
		o.DisableLogOutputChecksumValidationSkipped = true
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
		o.APIOptions = append(o.APIOptions, s.addAttemptMiddleware)
	})
	return s, nil
}

// Stats returns the request counters.
func (s *Store) Stats() Stats {
	st := Stats{
		Attempts:        s.attempts.Load(),
		Retries:         s.retries.Load(),
		FailedAttempts:  s.failed.Load(),
		AmbiguousPutIfs: s.ambig.Load(),
		AuthRetries:     s.authRetries.Load(),
	}
	if s.fileCreds != nil {
		st.CredentialReloads = s.fileCreds.reloads.Load()
	}
	return st
}

// Close releases idle connections.
func (s *Store) Close() error {
	if s.idle != nil {
		s.idle.CloseIdleConnections()
	}
	return nil
}

func (s *Store) key(k string) *string { return aws.String(s.prefix + k) }

// ---- per-attempt accounting and timeouts ----

type callKey struct{}

// call is the state of one store operation across its attempts. Attempts run
// one after another, so it needs no lock.
type call struct {
	op       string
	attempts int
	lastErr  error
	// authRetried is set once an attempt failed authentication and the
	// credentials were re-read for the next one.
	authRetried bool
}

func withCall(ctx context.Context, op string) (context.Context, *call) {
	c := &call{op: op}
	return context.WithValue(ctx, callKey{}, c), c
}

// addAttemptMiddleware puts attemptMiddleware right after the SDK's retry
// middleware, so it wraps every attempt (signing included).
func (s *Store) addAttemptMiddleware(stack *middleware.Stack) error {
	m := middleware.FinalizeMiddlewareFunc("ViperblockAttempt", s.attempt)
	if err := stack.Finalize.Insert(m, (&retry.Attempt{}).ID(), middleware.After); err != nil {
		return stack.Finalize.Add(m, middleware.After)
	}
	return nil
}

func (s *Store) attempt(ctx context.Context, in middleware.FinalizeInput, next middleware.FinalizeHandler) (middleware.FinalizeOutput, middleware.Metadata, error) {
	c, _ := ctx.Value(callKey{}).(*call)
	s.attempts.Add(1)
	if c != nil {
		c.attempts++
		if c.attempts > 1 {
			s.noteRetry(c.op, c.attempts, c.lastErr)
			backend.NoteRetry(ctx)
		}
	}
	actx, cancel := context.WithTimeout(ctx, s.cfg.AttemptTimeout)
	out, md, err := next.HandleFinalize(actx, in)
	if err != nil && actx.Err() != nil && ctx.Err() == nil {
		// Our own deadline, not the caller's: the SDK reports it as a
		// cancellation, which it never retries.
		err = &attemptTimeoutError{timeout: s.cfg.AttemptTimeout, msg: err.Error()}
	}
	if err == nil {
		if o, ok := out.Result.(*s3.GetObjectOutput); ok && o.Body != nil {
			// The body streams after we return: keep the deadline until it
			// is closed.
			o.Body = &cancelOnClose{ReadCloser: o.Body, cancel: cancel}
			cancel = nil
		}
	}
	if cancel != nil {
		cancel()
	}
	if err != nil {
		err = s.retryAuth(ctx, c, err)
		s.failed.Add(1)
		if c != nil {
			c.lastErr = err
		}
	}
	return out, md, err
}

func (s *Store) noteRetry(op string, attempt int, err error) {
	s.retries.Add(1)
	if s.cfg.OnRetry != nil {
		s.cfg.OnRetry(op, attempt, err)
	}
}

type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c *cancelOnClose) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}

// attemptTimeoutError is an attempt that ran out of its own time. It does not
// unwrap to context.DeadlineExceeded on purpose: the SDK must retry it.
type attemptTimeoutError struct {
	timeout time.Duration
	msg     string
}

func (e *attemptTimeoutError) Error() string {
	return fmt.Sprintf("attempt timed out after %v: %s", e.timeout, e.msg)
}
func (e *attemptTimeoutError) Timeout() bool        { return true }
func (e *attemptTimeoutError) RetryableError() bool { return true }

// extraRetryable retries what the SDK's defaults leave undecided: our attempt
// timeouts, responses cut short, and responses that could not be decoded.
func extraRetryable(err error) aws.Ternary {
	var te *attemptTimeoutError
	var de *smithy.DeserializationError
	switch {
	case errors.As(err, &te), errors.Is(err, io.ErrUnexpectedEOF), errors.As(err, &de):
		return aws.TrueTernary
	}
	return aws.UnknownTernary
}

// bodyError is a failure while reading a response body, after the SDK call
// returned: Get repeats the whole request.
type bodyError struct{ err error }

func (e *bodyError) Error() string { return "reading response body: " + e.err.Error() }
func (e *bodyError) Unwrap() error { return e.err }

// withBodyRetry runs fn, repeating it while it fails with a bodyError. fn
// returns other errors ready for the caller.
func (s *Store) withBodyRetry(ctx context.Context, op, key string, fn func(ctx context.Context) error) error {
	for attempt := 1; ; attempt++ {
		cctx, _ := withCall(ctx, op)
		err := fn(cctx)
		var be *bodyError
		if err == nil || !errors.As(err, &be) {
			return err
		}
		if ctx.Err() != nil || attempt >= s.cfg.MaxAttempts {
			return s.wrap(op, key, err)
		}
		s.noteRetry(op, attempt+1, err)
		d := s.backoff(attempt)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return s.wrap(op, key, err)
		case <-t.C:
		}
	}
}

// backoff is full jitter over 50 ms * 2^(attempt-1), capped at MaxBackoff,
// as the SDK's standard retryer does.
func (s *Store) backoff(attempt int) time.Duration {
	d := float64(50*time.Millisecond) * math.Pow(2, float64(attempt-1))
	if d > float64(s.cfg.MaxBackoff) {
		d = float64(s.cfg.MaxBackoff)
	}
	return time.Duration(rand.Float64() * d)
}

// ---- error mapping ----

func errInfo(err error) (code string, status int) {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		code = ae.ErrorCode()
	}
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		status = re.HTTPStatusCode()
	}
	return code, status
}

func isNotFound(err error) bool {
	code, status := errInfo(err)
	return code == "NoSuchKey" || code == "NotFound" || status == http.StatusNotFound && code != "NoSuchBucket"
}

func isRange(err error) bool {
	code, status := errInfo(err)
	return code == "InvalidRange" || status == http.StatusRequestedRangeNotSatisfiable
}

func isPrecondition(err error) bool {
	code, status := errInfo(err)
	return code == "PreconditionFailed" || code == "ConditionalRequestConflict" || status == http.StatusPreconditionFailed
}

func (s *Store) wrap(op, key string, err error) error {
	var sentinel error
	switch {
	case isNotFound(err):
		sentinel = backend.ErrNotFound
	case isRange(err):
		sentinel = backend.ErrRange
	}
	if sentinel != nil {
		return fmt.Errorf("%w: s3 %s s3://%s/%s%s: %w", sentinel, op, s.bucket, s.prefix, key, err)
	}
	return fmt.Errorf("viperblock/backend/s3: %s s3://%s/%s%s: %w", op, s.bucket, s.prefix, key, err)
}

// ---- operations ----

// readBody reads a whole response body of the advertised length.
func readBody(body io.Reader, length *int64) ([]byte, error) {
	if length == nil || *length < 0 {
		d, err := io.ReadAll(body)
		if err != nil {
			return nil, &bodyError{err}
		}
		return d, nil
	}
	d := make([]byte, *length)
	if _, err := io.ReadFull(body, d); err != nil {
		return nil, &bodyError{err}
	}
	return d, nil
}

// Get implements backend.Store.
func (s *Store) Get(ctx context.Context, key string) ([]byte, backend.Version, error) {
	if err := backend.ValidateKey(key); err != nil {
		return nil, "", err
	}
	var data []byte
	var ver backend.Version
	err := s.withBodyRetry(ctx, "GetObject", key, func(ctx context.Context) error {
		out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: &s.bucket, Key: s.key(key)})
		if err != nil {
			return s.wrap("GetObject", key, err)
		}
		defer out.Body.Close()
		d, err := readBody(out.Body, out.ContentLength)
		if err != nil {
			return err
		}
		data, ver = d, backend.Version(aws.ToString(out.ETag))
		return nil
	})
	if err != nil {
		return nil, "", err
	}
	if ver == "" {
		return nil, "", fmt.Errorf("viperblock/backend/s3: GetObject %s: the server sent no ETag", key)
	}
	return data, ver, nil
}

// GetRange implements backend.Store.
func (s *Store) GetRange(ctx context.Context, key string, off, n int64) ([]byte, error) {
	if err := backend.ValidateKey(key); err != nil {
		return nil, err
	}
	if off < 0 || n < 0 || off > math.MaxInt64-n {
		return nil, fmt.Errorf("%w: %s [%d,+%d)", backend.ErrRange, key, off, n)
	}
	if n == 0 {
		// No Range header can ask for nothing: check the size instead.
		cctx, _ := withCall(ctx, "HeadObject")
		out, err := s.client.HeadObject(cctx, &s3.HeadObjectInput{Bucket: &s.bucket, Key: s.key(key)})
		if err != nil {
			return nil, s.wrap("HeadObject", key, err)
		}
		if size := aws.ToInt64(out.ContentLength); off > size {
			return nil, fmt.Errorf("%w: %s [%d,+0) of %d bytes", backend.ErrRange, key, off, size)
		}
		return []byte{}, nil
	}
	var data []byte
	err := s.withBodyRetry(ctx, "GetObject", key, func(ctx context.Context) error {
		out, err := s.client.GetObject(ctx, &s3.GetObjectInput{
			Bucket: &s.bucket,
			Key:    s.key(key),
			Range:  aws.String(fmt.Sprintf("bytes=%d-%d", off, off+n-1)),
		})
		if err != nil {
			return s.wrap("GetObject", key, err)
		}
		defer out.Body.Close()
		d, err := readBody(out.Body, out.ContentLength)
		if err != nil {
			return err
		}
		cr := aws.ToString(out.ContentRange)
		if cr == "" {
			// The server ignored the range and sent the whole object.
			if off+n > int64(len(d)) {
				return fmt.Errorf("%w: %s [%d,+%d) of %d bytes", backend.ErrRange, key, off, n, len(d))
			}
			data = d[off : off+n : off+n]
			return nil
		}
		start, err := rangeStart(cr)
		if err != nil || start != off {
			return fmt.Errorf("viperblock/backend/s3: GetObject %s: asked for bytes from %d, got Content-Range %q", key, off, cr)
		}
		if int64(len(d)) < n {
			// S3 clips a range that runs past the end.
			return fmt.Errorf("%w: %s [%d,+%d) (%s)", backend.ErrRange, key, off, n, cr)
		}
		data = d[:n:n]
		return nil
	})
	if err != nil {
		return nil, err
	}
	return data, nil
}

// rangeStart parses the first byte of "bytes START-END/TOTAL".
func rangeStart(cr string) (int64, error) {
	rest, ok := strings.CutPrefix(cr, "bytes ")
	if !ok {
		return 0, fmt.Errorf("bad Content-Range %q", cr)
	}
	start, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, fmt.Errorf("bad Content-Range %q", cr)
	}
	return strconv.ParseInt(start, 10, 64)
}

// putInput is the PutObject request of data at key. It carries a checksum
// the server verifies before storing anything, so a body damaged on the
// way is refused: the CRC32C of the data (computed in hardware, and given
// to the SDK so it computes none of its own) and, for a conditional put,
// the MD5 as well, which appliedEarlier compares with the ETag.
func putInput(bucket string, key *string, data []byte, withMD5 bool) (*s3.PutObjectInput, [md5.Size]byte) {
	var sum [md5.Size]byte
	in := &s3.PutObjectInput{
		Bucket:            &bucket,
		Key:               key,
		Body:              bytes.NewReader(data),
		ContentLength:     aws.Int64(int64(len(data))),
		ChecksumAlgorithm: types.ChecksumAlgorithmCrc32c,
		ChecksumCRC32C:    aws.String(base64.StdEncoding.EncodeToString(binary.BigEndian.AppendUint32(nil, crc32.Checksum(data, castagnoli)))),
	}
	if withMD5 {
		sum = md5.Sum(data)
		in.ContentMD5 = aws.String(base64.StdEncoding.EncodeToString(sum[:]))
	}
	return in, sum
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Put implements backend.Store.
func (s *Store) Put(ctx context.Context, key string, data []byte) error {
	if err := backend.ValidateKey(key); err != nil {
		return err
	}
	in, _ := putInput(s.bucket, s.key(key), data, false)
	cctx, _ := withCall(ctx, "PutObject")
	if _, err := s.client.PutObject(cctx, in); err != nil {
		return s.wrap("PutObject", key, err)
	}
	return nil
}

// PutIf implements backend.Store. See the package doc for how a PutIf whose
// response was lost is resolved.
func (s *Store) PutIf(ctx context.Context, key string, data []byte, ifMatch backend.Version) (backend.Version, error) {
	if err := backend.ValidateKey(key); err != nil {
		return "", err
	}
	in, sum := putInput(s.bucket, s.key(key), data, true)
	if ifMatch == "" {
		in.IfNoneMatch = aws.String("*")
	} else {
		in.IfMatch = aws.String(string(ifMatch))
	}
	cctx, c := withCall(ctx, "PutObject")
	out, err := s.client.PutObject(cctx, in)
	if err == nil {
		if out.ETag == nil || *out.ETag == "" {
			return "", fmt.Errorf("viperblock/backend/s3: PutObject %s: the server sent no ETag", key)
		}
		return backend.Version(*out.ETag), nil
	}
	lost := isPrecondition(err) || ifMatch != "" && isNotFound(err)
	if !lost {
		return "", s.wrap("PutObject", key, err)
	}
	if c.attempts > 1 {
		v, ok, rerr := s.appliedEarlier(ctx, key, data, sum)
		if ok {
			s.ambig.Add(1)
			return v, nil
		}
		if rerr != nil {
			// Neither a success nor a conflict we can vouch for: an earlier
			// attempt may have applied.
			return "", fmt.Errorf("viperblock/backend/s3: PutObject s3://%s/%s%s: outcome unknown: attempt %d failed its precondition (%v) and reading the object back failed: %w",
				s.bucket, s.prefix, key, c.attempts, err, rerr)
		}
	}
	return "", fmt.Errorf("%w: s3 PutObject s3://%s/%s%s: %w", backend.ErrPrecondition, s.bucket, s.prefix, key, err)
}

// appliedEarlier reports whether key now holds exactly data, and its
// version; an error means it could not tell.
func (s *Store) appliedEarlier(ctx context.Context, key string, data []byte, sum [md5.Size]byte) (backend.Version, bool, error) {
	if err := ctx.Err(); err != nil {
		return "", false, err
	}
	cctx, _ := withCall(ctx, "HeadObject")
	h, err := s.client.HeadObject(cctx, &s3.HeadObjectInput{Bucket: &s.bucket, Key: s.key(key)})
	if isNotFound(err) {
		return "", false, nil // deleted since: not ours
	}
	if err != nil {
		return "", false, s.wrap("HeadObject", key, err)
	}
	etag := aws.ToString(h.ETag)
	if etag != "" && strings.Trim(etag, `"`) == hex.EncodeToString(sum[:]) && aws.ToInt64(h.ContentLength) == int64(len(data)) {
		return backend.Version(etag), true, nil
	}
	cur, v, err := s.Get(ctx, key)
	if errors.Is(err, backend.ErrNotFound) {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	if !bytes.Equal(cur, data) {
		return "", false, nil
	}
	return v, true, nil
}

// Delete implements backend.Store.
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := backend.ValidateKey(key); err != nil {
		return err
	}
	cctx, _ := withCall(ctx, "DeleteObject")
	_, err := s.client.DeleteObject(cctx, &s3.DeleteObjectInput{Bucket: &s.bucket, Key: s.key(key)})
	if err != nil && !isNotFound(err) {
		return s.wrap("DeleteObject", key, err)
	}
	return nil
}

// List implements backend.Store.
func (s *Store) List(ctx context.Context, prefix string) ([]string, error) {
	if prefix != "" {
		if err := backend.ValidateKey(strings.TrimSuffix(prefix, "/")); err != nil {
			return nil, err
		}
	}
	pages := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{
		Bucket: &s.bucket,
		Prefix: aws.String(s.prefix + prefix),
	})
	var keys []string
	for pages.HasMorePages() {
		cctx, _ := withCall(ctx, "ListObjectsV2")
		page, err := pages.NextPage(cctx)
		if err != nil {
			return nil, s.wrap("ListObjectsV2", prefix, err)
		}
		for _, o := range page.Contents {
			k, ok := strings.CutPrefix(aws.ToString(o.Key), s.prefix)
			if !ok || k == "" || strings.HasSuffix(k, "/") {
				continue
			}
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	return keys, nil
}

func imdsState(on bool) imds.ClientEnableState {
	if on {
		return imds.ClientEnabled
	}
	return imds.ClientDisabled
}

// ListDirs implements backend.DirLister with ListObjectsV2's delimiter: one
// request per 1,000 names, however many keys lie below them.
func (s *Store) ListDirs(ctx context.Context, prefix string) ([]string, error) {
	if prefix != "" {
		if !strings.HasSuffix(prefix, "/") {
			return nil, fmt.Errorf("%w: ListDirs prefix %q must be empty or end with '/'", backend.ErrInvalidKey, prefix)
		}
		if err := backend.ValidateKey(strings.TrimSuffix(prefix, "/")); err != nil {
			return nil, err
		}
	}
	pages := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{
		Bucket:    &s.bucket,
		Prefix:    aws.String(s.prefix + prefix),
		Delimiter: aws.String("/"),
	})
	var dirs []string
	for pages.HasMorePages() {
		cctx, _ := withCall(ctx, "ListObjectsV2")
		page, err := pages.NextPage(cctx)
		if err != nil {
			return nil, s.wrap("ListObjectsV2", prefix, err)
		}
		for _, p := range page.CommonPrefixes {
			rest, ok := strings.CutPrefix(aws.ToString(p.Prefix), s.prefix+prefix)
			if d := strings.TrimSuffix(rest, "/"); ok && d != "" && !strings.Contains(d, "/") {
				dirs = append(dirs, d)
			}
		}
	}
	sort.Strings(dirs)
	return dirs, nil
}
