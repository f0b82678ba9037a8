// Package credsync keeps an S3 credentials file in step with a Kubernetes
// Secret mounted as a volume, so that processes holding volumes open (the
// per-volume nbdkit servers, the controller) follow a key rotation without
// a restart or a restage.
//
// # Source: a Secret volume
//
// The source is a directory with one file per Secret key, named as the
// AWS environment variables are (the one spelling of S3 credentials across
// the mounted Secret, CSI secrets and the environment):
//
//	AWS_ACCESS_KEY_ID        the access key ID (required)
//	AWS_SECRET_ACCESS_KEY    the secret access key (required)
//	AWS_SESSION_TOKEN        a session token (optional)
//
// Older spellings are still read, with a deprecation warning in the log:
// accessKeyID, secretAccessKey and sessionToken (the Secret as shipped
// before), and awsAccessKeyID, awsSecretAccessKey and awsSessionToken (the
// CSI secrets' keys before). CanonicalKey maps every spelling. A key given
// under two spellings with different values is an error.
//
// Leading and trailing white space (such as the newline `kubectl create
// secret --from-file` keeps) is trimmed; a value with a line break or NUL
// inside is an error. The kubelet writes a Secret volume as timestamped
// directories and a "..data" symbolic link to the current one, with each
// key a link through "..data"; an update writes a new directory and swaps
// the link with a rename. When "..data" exists, Sync reads all the keys
// from the one directory it names, and starts again if the link moved
// meanwhile, so it never pairs the access key of one version with the
// secret of another. A plain directory is read as it is.
//
// # Destination: an env-style credentials file
//
// The file is the format the s3 backend's credentials_file= parameter reads
// (see package s3): a comment naming the source, then
//
//	AWS_ACCESS_KEY_ID="..."
//	AWS_SECRET_ACCESS_KEY="..."
//	AWS_SESSION_TOKEN="..."        (only if the Secret has sessionToken)
//
// Values are written in double quotes, which the reader strips as a pair,
// so any value without a line break reads back exactly. The file is written
// only when its content changes, atomically: a temporary file in the same
// directory (mode 0600), fsync, rename over the destination, fsync of the
// directory. A reader sees the old file or the new one, never a mix, and
// after a crash the file is one of the two as well.
//
// Nothing here logs or returns a credential value; errors name files only.
package credsync

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/klog/v2"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/vfs"
)

// The canonical names of the Secret's keys: those of the environment
// variables the AWS SDKs read, and of the credentials file.
const (
	AccessKeyID     = "AWS_ACCESS_KEY_ID"
	SecretAccessKey = "AWS_SECRET_ACCESS_KEY"
	SessionToken    = "AWS_SESSION_TOKEN"
)

// Deprecated: the Secret's key names before AccessKeyID, SecretAccessKey
// and SessionToken; still read.
const (
	AccessKeyIDFile     = "accessKeyID"
	SecretAccessKeyFile = "secretAccessKey"
	SessionTokenFile    = "sessionToken"
)

// deprecatedKeys maps each older spelling to its canonical name.
var deprecatedKeys = map[string]string{
	AccessKeyIDFile: AccessKeyID, SecretAccessKeyFile: SecretAccessKey, SessionTokenFile: SessionToken,
	"awsAccessKeyID": AccessKeyID, "awsSecretAccessKey": SecretAccessKey, "awsSessionToken": SessionToken,
}

// CanonicalKey returns the canonical name of a credential key given under
// any accepted spelling, whether that spelling is deprecated, and ok false
// for a key that is not a credential.
func CanonicalKey(name string) (canonical string, deprecated, ok bool) {
	switch name {
	case AccessKeyID, SecretAccessKey, SessionToken:
		return name, false, true
	}
	c, ok := deprecatedKeys[name]
	return c, ok, ok
}

// spellings lists the accepted names of a canonical key, canonical first.
func spellings(canonical string) []string {
	names := []string{canonical}
	for _, old := range []string{AccessKeyIDFile, SecretAccessKeyFile, SessionTokenFile, "awsAccessKeyID", "awsSecretAccessKey", "awsSessionToken"} {
		if deprecatedKeys[old] == canonical {
			names = append(names, old)
		}
	}
	return names
}

// HasAccessKey reports whether dir holds an access key ID under any
// spelling (whether a Secret is mounted there at all).
func HasAccessKey(dir string) bool {
	for _, n := range spellings(AccessKeyID) {
		if _, err := os.Stat(filepath.Join(dir, n)); err == nil {
			return true
		}
	}
	return false
}

// dataLink is the link the kubelet swaps to update a Secret volume.
const dataLink = "..data"

// maxValue bounds what is read of one key's file.
const maxValue = 16 << 10

// ErrInvalid is wrapped by the errors for a source directory that lacks a
// required key or holds a value that cannot be written.
var ErrInvalid = errors.New("credsync: invalid credentials source")

// Sync makes dstFile hold the credentials in srcDir and reports whether it
// wrote the file. It writes nothing when the file is up to date, or when
// srcDir is incomplete or unreadable (the file keeps its last good content).
func Sync(srcDir, dstFile string) (changed bool, err error) {
	changed, _, err = sync(srcDir, dstFile)
	return changed, err
}

// sync is Sync, also returning the deprecated key names srcDir uses.
func sync(srcDir, dstFile string) (changed bool, deprecated []string, err error) {
	content, deprecated, err := render(srcDir)
	if err != nil {
		return false, nil, err
	}
	old, err := os.ReadFile(dstFile)
	if err == nil && bytes.Equal(old, content) {
		return false, deprecated, nil
	}
	if err := writeAtomic(dstFile, content); err != nil {
		return false, deprecated, fmt.Errorf("credsync: write %s: %w", dstFile, err)
	}
	return true, deprecated, nil
}

// Run calls Sync every interval until ctx ends, and once at the start. It
// logs (through klog.FromContext(ctx)) each time the file is written, and a
// failure once until Sync succeeds again; never a credential. It returns
// when ctx ends, with nil. Keys under a deprecated spelling are warned
// about once, and again whenever the set of them changes.
func Run(ctx context.Context, srcDir, dstFile string, interval time.Duration) error {
	log := klog.FromContext(ctx).WithValues("source", srcDir, "file", dstFile)
	t := time.NewTicker(interval)
	defer t.Stop()
	failing := false
	warned := ""
	for {
		changed, deprecated, err := sync(srcDir, dstFile)
		if d := strings.Join(deprecated, ","); d != warned {
			warned = d
			if d != "" {
				log.Info("deprecated: the Secret names S3 credentials with old keys; rename them to "+AccessKeyID+", "+SecretAccessKey+" and "+SessionToken+" (the old names are still read)", "keys", deprecated)
			}
		}
		switch {
		case err != nil && !failing:
			log.Error(err, "cannot update the credentials file; it keeps its last content")
			failing = true
		case err == nil && failing:
			log.Info("credentials file can be updated again")
			failing = false
		}
		if changed {
			log.Info("credentials changed; credentials file rewritten")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// render reads srcDir and returns the credentials file's content and the
// deprecated key names it found.
func render(srcDir string) ([]byte, []string, error) {
	var keys map[string]string
	var deprecated []string
	var err error
	// A swap of "..data" between reading the link and reading the files
	// removes the old directory (ENOENT) or leaves the link moved: read
	// again. The kubelet swaps rarely, so a few tries always suffice.
	for try := 0; ; try++ {
		keys, deprecated, err = readSnapshot(srcDir)
		if err == nil || !errors.Is(err, errMoved) || try == 4 {
			break
		}
	}
	if err != nil {
		return nil, nil, err
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "# Written by viperblock from the Secret volume %s; do not edit.\n", srcDir)
	fmt.Fprintf(&b, "%s=\"%s\"\n", AccessKeyID, keys[AccessKeyID])
	fmt.Fprintf(&b, "%s=\"%s\"\n", SecretAccessKey, keys[SecretAccessKey])
	if tok := keys[SessionToken]; tok != "" {
		fmt.Fprintf(&b, "%s=\"%s\"\n", SessionToken, tok)
	}
	return b.Bytes(), deprecated, nil
}

// errMoved is a read that raced with a swap of "..data".
var errMoved = errors.New("credsync: secret volume updated during the read")

// readSnapshot reads the keys of one version of srcDir, by canonical
// name, and lists the deprecated names it read them from.
func readSnapshot(srcDir string) (map[string]string, []string, error) {
	dir := srcDir
	target, err := os.Readlink(filepath.Join(srcDir, dataLink))
	switch {
	case err == nil:
		if !filepath.IsAbs(target) {
			target = filepath.Join(srcDir, target)
		}
		dir = target
	case errors.Is(err, os.ErrNotExist):
		target = "" // a plain directory
	default:
		return nil, nil, fmt.Errorf("credsync: %w", err)
	}
	keys := map[string]string{}
	var deprecated []string
	for _, key := range []string{AccessKeyID, SecretAccessKey, SessionToken} {
		found := ""
		for _, name := range spellings(key) {
			v, err := readValue(filepath.Join(dir, name))
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				return nil, nil, err
			}
			if found != "" && v != keys[key] {
				return nil, nil, fmt.Errorf("%w: %s gives %s as %s and as %s, with different values", ErrInvalid, srcDir, key, found, name)
			}
			if found == "" {
				found, keys[key] = name, v
				if name != key {
					deprecated = append(deprecated, name)
				}
			}
		}
		if found == "" {
			if target != "" && moved(srcDir, target) {
				return nil, nil, errMoved
			}
			if key == SessionToken {
				continue
			}
			return nil, nil, fmt.Errorf("%w: %s has no %s", ErrInvalid, srcDir, key)
		}
		if keys[key] == "" && key != SessionToken {
			return nil, nil, fmt.Errorf("%w: %s is empty", ErrInvalid, filepath.Join(srcDir, found))
		}
	}
	if target != "" && moved(srcDir, target) {
		return nil, nil, errMoved
	}
	return keys, deprecated, nil
}

// moved reports whether srcDir's "..data" no longer names target.
func moved(srcDir, target string) bool {
	now, err := os.Readlink(filepath.Join(srcDir, dataLink))
	if err != nil {
		return true
	}
	if !filepath.IsAbs(now) {
		now = filepath.Join(srcDir, now)
	}
	return now != target
}

// readValue reads one key's file, trimmed, and checks that it can be
// written as a quoted value.
func readValue(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxValue+1))
	if err != nil {
		return "", fmt.Errorf("credsync: read %s: %w", path, err)
	}
	if len(b) > maxValue {
		return "", fmt.Errorf("%w: %s is larger than %d bytes", ErrInvalid, path, maxValue)
	}
	v := strings.TrimSpace(string(b))
	if strings.ContainsAny(v, "\r\n\x00") {
		return "", fmt.Errorf("%w: %s holds a line break or NUL", ErrInvalid, path)
	}
	return v, nil
}

// writeAtomic replaces path with data, mode 0600, through the project's
// one atomic write (temporary file, fsync, rename, directory fsync).
func writeAtomic(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return vfs.WriteFileAtomic(vfs.Default, path, data)
}
