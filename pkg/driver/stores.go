package driver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/viperblock/viperblock-csi/pkg/credsync"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/vfs"
)

// CSI secrets (provisioner, node-stage, snapshotter, controller-expand
// and controller-publish secrets) carry S3 credentials under the keys
// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN, the same
// names as the mounted Secret's and the environment's (credsync). The
// older awsAccessKeyID, awsSecretAccessKey, awsSessionToken (and
// accessKeyID, secretAccessKey, sessionToken) still work, with a
// deprecation warning logged once per name; other keys are ignored (and
// never logged).
var warnedKeys sync.Map // deprecated secret key names already warned about

// credentials turns CSI secrets into the env-style credentials file format
// of the S3 store (see pkg/viperblock/backend/s3). It returns nil when the
// secrets hold no credentials.
func credentials(secrets map[string]string) ([]byte, error) {
	vals := map[string]string{}
	for k, v := range secrets {
		env, deprecated, ok := credsync.CanonicalKey(k)
		if !ok {
			continue
		}
		if _, warned := warnedKeys.LoadOrStore(k, true); deprecated && !warned {
			klog.InfoS("deprecated: a CSI secret names an S3 credential with an old key; rename it (the old name is still read)", "key", k, "use", env)
		}
		if v == "" || strings.ContainsAny(v, "\r\n\x00") {
			return nil, fmt.Errorf("%w: secret key %s is empty or has a line break", errInvalidSecret, k)
		}
		if prev, dup := vals[env]; dup && prev != v {
			// Both spellings, and which one won would depend on map order.
			return nil, fmt.Errorf("%w: secret %s is given under two names with different values", errInvalidSecret, env)
		}
		vals[env] = v
	}
	if len(vals) == 0 {
		return nil, nil
	}
	if vals[credsync.AccessKeyID] == "" || vals[credsync.SecretAccessKey] == "" {
		return nil, fmt.Errorf("%w: secrets need both %s and %s", errInvalidSecret, credsync.AccessKeyID, credsync.SecretAccessKey)
	}
	var b strings.Builder
	for _, k := range []string{credsync.AccessKeyID, credsync.SecretAccessKey, credsync.SessionToken} {
		if v := vals[k]; v != "" {
			fmt.Fprintf(&b, "%s=%s\n", k, envValue(v))
		}
	}
	return []byte(b.String()), nil
}

// envValue renders a value of the credentials file so that the S3 store's
// reader reads it back unchanged: bare, unless the reader would trim white
// space off it or strip quotes around it; then in double quotes (the reader
// strips one pair of matching quotes, and nothing inside them).
func envValue(v string) string {
	if strings.TrimSpace(v) != v || len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
		return `"` + v + `"`
	}
	return v
}

// withCredentialsFile returns the store URL with credentials_file=path
// (only S3 URLs take credentials; other stores ignore them).
func withCredentialsFile(raw, path string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("%w: %v", backend.ErrInvalidURL, err)
	}
	if u.Scheme != "s3" || path == "" {
		return raw, nil
	}
	q := u.Query()
	q.Set("credentials_file", path)
	u.RawQuery = q.Encode()
	return u.String(), nil
}

// writePrivateFile writes data to path atomically with mode 0600
// (vfs.WriteFileAtomic: a temporary file, fsync, rename, directory fsync).
func writePrivateFile(path string, data []byte) error {
	return vfs.WriteFileAtomicMode(vfs.Default, path, data, 0o600)
}

// storeOpener opens a store by URL (backend.Open; tests substitute it).
type storeOpener func(ctx context.Context, url string) (backend.Store, error)

// storeSet is the driver's one cache of store handles, shared by every
// RPC of a service (the controller's, or the node's and its healer's). It
// resolves store names to handles, and caches handles by their final URL:
//
//   - get(name, secrets): the configured URL; with CSI secrets, a URL that
//     names a credentials file of its own (credDir/<name>-<hash>.env), so
//     a request with the same secrets reuses both file and handle;
//   - byURL(url): a URL the caller built, such as a staged volume's, which
//     names the volume's own credentials file (the node's volumeURL).
type storeSet struct {
	urls    map[string]string
	def     string
	credDir string
	open    storeOpener

	mu    sync.Mutex               // guards cache
	cache map[string]backend.Store // by final URL

	checkMu sync.Mutex       // guards checked
	checked map[string]error // self-test outcome by store (storeIdentity): nil passed, else refused
}

func newStoreSet(o *Options, credDir string, open storeOpener) *storeSet {
	if open == nil {
		open = backend.Open
	}
	for name, u := range o.Stores {
		klog.V(1).InfoS("store", "name", name, "url", redactURL(u), "default", name == o.DefaultStore)
	}
	return &storeSet{urls: o.Stores, def: o.DefaultStore, credDir: credDir, open: open, cache: map[string]backend.Store{},
		checked: map[string]error{}}
}

// names lists the configured stores, sorted.
func (s *storeSet) names() []string {
	var n []string
	for k := range s.urls {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

// url returns a store's URL, or an error wrapping backend.ErrNotFound for a
// name that is not configured.
func (s *storeSet) url(name string) (string, error) {
	u, ok := s.urls[name]
	if !ok {
		return "", fmt.Errorf("store %q is not configured on this driver: %w", name, backend.ErrNotFound)
	}
	return u, nil
}

// get opens (or reuses) store name with the credentials in secrets.
func (s *storeSet) get(ctx context.Context, name string, secrets map[string]string) (backend.Store, error) {
	raw, err := s.url(name)
	if err != nil {
		return nil, err
	}
	creds, err := credentials(secrets)
	if err != nil {
		return nil, err
	}
	var prepare func() error
	if creds != nil && strings.HasPrefix(raw, "s3:") {
		if s.credDir == "" {
			return nil, fmt.Errorf("no credentials directory configured")
		}
		sum := sha256.Sum256(append([]byte(name+"\x00"), creds...))
		path := filepath.Join(s.credDir, name+"-"+hex.EncodeToString(sum[:16])+".env")
		if raw, err = withCredentialsFile(raw, path); err != nil {
			return nil, err
		}
		prepare = func() error {
			if err := writePrivateFile(path, creds); err != nil {
				return fmt.Errorf("write credentials file: %w", err)
			}
			return nil
		}
	}
	st, err := s.byURL(ctx, raw, prepare)
	if err != nil {
		return nil, fmt.Errorf("open store %q: %w", name, err)
	}
	return st, nil
}

// byURL opens (or reuses) the store at url. prepare, if set, runs before a
// new handle is opened (it writes the credentials file the URL names; it
// runs under the lock, so two writers never race on one file). The open
// itself, which may reach the network, runs outside the lock; of two
// concurrent opens of one URL the first to finish is kept.
func (s *storeSet) byURL(ctx context.Context, url string, prepare func() error) (backend.Store, error) {
	s.mu.Lock()
	if st, ok := s.cache[url]; ok {
		s.mu.Unlock()
		return st, nil
	}
	if prepare != nil {
		if err := prepare(); err != nil {
			s.mu.Unlock()
			return nil, err
		}
	}
	s.mu.Unlock()
	st, err := s.open(ctx, url)
	if err != nil {
		return nil, err
	}
	if err := s.verify(ctx, url, st); err != nil {
		st.Close()
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.cache[url]; ok {
		st.Close()
		return old, nil
	}
	s.cache[url] = st
	return st, nil
}

// storeCheckTimeout bounds one run of the store self-test.
const storeCheckTimeout = 2 * time.Minute

// verify runs the store self-test (backend.Check) on a newly opened S3
// store the first time this process opens it, whatever credentials file
// the URL names, and remembers the outcome: a store that passed is not
// checked again, one that answered wrongly (it ignores conditional writes,
// on which fencing depends) is refused from then on with an error wrapping
// backend.ErrIncompatible (FailedPrecondition). A check that could not run
// (the store unreachable, the keys refused) is not remembered: the error
// is returned and the next open checks again. File and memory stores
// always do what the engine needs and are not checked.
func (s *storeSet) verify(ctx context.Context, raw string, st backend.Store) error {
	id, ok := storeIdentity(raw)
	if !ok {
		return nil
	}
	s.checkMu.Lock()
	err, done := s.checked[id]
	s.checkMu.Unlock()
	if done {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, storeCheckTimeout)
	defer cancel()
	rep, err := backend.Check(cctx, st)
	switch {
	case err == nil:
		klog.InfoS("store passed the compatibility self-test", "store", redactURL(raw), "checks", len(rep.Results))
	case errors.Is(err, backend.ErrIncompatible):
		klog.ErrorS(err, "store refused: it does not honour conditional writes or basic object semantics, which fencing depends on; no volume is served from it", "store", redactURL(raw))
		err = fmt.Errorf("store %s failed the compatibility self-test (vblock store check): %w", redactURL(raw), err)
	default:
		return fmt.Errorf("store %s: compatibility self-test could not run: %w", redactURL(raw), err)
	}
	s.checkMu.Lock()
	s.checked[id] = err
	s.checkMu.Unlock()
	return err
}

// storeIdentity names the store an S3 URL reaches, independent of the
// credentials file it names; ok is false for stores that need no check.
func storeIdentity(raw string) (string, bool) {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "s3" {
		return "", false
	}
	q := u.Query()
	q.Del("credentials_file")
	u.RawQuery = q.Encode()
	u.User = nil
	return u.String(), true
}

// checkAll opens every configured store, which runs the self-test on each
// S3 store. It returns an error naming the stores that failed the test;
// a store that could not be reached is only logged (it is checked again
// when a volume first needs it).
func (s *storeSet) checkAll(ctx context.Context) error {
	var refused []error
	for _, name := range s.names() {
		if _, ok := storeIdentity(s.urls[name]); !ok {
			continue
		}
		_, err := s.get(ctx, name, nil)
		switch {
		case errors.Is(err, backend.ErrIncompatible):
			refused = append(refused, err)
		case err != nil:
			klog.InfoS("store self-test could not run at start; it runs when a volume first needs the store", "store", name, "err", err)
		}
	}
	return errors.Join(refused...)
}

// drop closes and forgets the handle for url (a volume's, once unstaged:
// its credentials file goes with it).
func (s *storeSet) drop(url string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st, ok := s.cache[url]; ok {
		st.Close()
		delete(s.cache, url)
	}
}

// close closes every cached store.
func (s *storeSet) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, st := range s.cache {
		st.Close()
		delete(s.cache, k)
	}
}

// redactURL shows a store URL without user information or query (where
// credential references live).
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "<unparseable URL>"
	}
	u.User = nil
	u.RawQuery = ""
	return u.String()
}
