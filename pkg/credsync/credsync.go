// Package credsync keeps an S3 credentials file in step with a Kubernetes
// Secret mounted as a volume, so that processes holding volumes open (the
// per-volume nbdkit servers, the controller) follow a key rotation without
// a restart or a restage.
//
// # Source: a Secret volume
//
// The source is a directory with one file per Secret key:
//
//	accessKeyID        the access key ID (required)
//	secretAccessKey    the secret access key (required)
//	sessionToken       a session token (optional)
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

// The file names of the Secret's keys.
const (
	AccessKeyIDFile     = "accessKeyID"
	SecretAccessKeyFile = "secretAccessKey"
	SessionTokenFile    = "sessionToken"
)

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
	content, err := render(srcDir)
	if err != nil {
		return false, err
	}
	old, err := os.ReadFile(dstFile)
	if err == nil && bytes.Equal(old, content) {
		return false, nil
	}
	if err := writeAtomic(dstFile, content); err != nil {
		return false, fmt.Errorf("credsync: write %s: %w", dstFile, err)
	}
	return true, nil
}

// Run calls Sync every interval until ctx ends, and once at the start. It
// logs (through klog.FromContext(ctx)) each time the file is written, and a
// failure once until Sync succeeds again; never a credential. It returns
// when ctx ends, with nil.
func Run(ctx context.Context, srcDir, dstFile string, interval time.Duration) error {
	log := klog.FromContext(ctx).WithValues("source", srcDir, "file", dstFile)
	t := time.NewTicker(interval)
	defer t.Stop()
	failing := false
	for {
		changed, err := Sync(srcDir, dstFile)
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

// render reads srcDir and returns the credentials file's content.
func render(srcDir string) ([]byte, error) {
	var keys map[string]string
	var err error
	// A swap of "..data" between reading the link and reading the files
	// removes the old directory (ENOENT) or leaves the link moved: read
	// again. The kubelet swaps rarely, so a few tries always suffice.
	for try := 0; ; try++ {
		keys, err = readSnapshot(srcDir)
		if err == nil || !errors.Is(err, errMoved) || try == 4 {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "# Written by viperblock from the Secret volume %s; do not edit.\n", srcDir)
	fmt.Fprintf(&b, "AWS_ACCESS_KEY_ID=\"%s\"\n", keys[AccessKeyIDFile])
	fmt.Fprintf(&b, "AWS_SECRET_ACCESS_KEY=\"%s\"\n", keys[SecretAccessKeyFile])
	if tok := keys[SessionTokenFile]; tok != "" {
		fmt.Fprintf(&b, "AWS_SESSION_TOKEN=\"%s\"\n", tok)
	}
	return b.Bytes(), nil
}

// errMoved is a read that raced with a swap of "..data".
var errMoved = errors.New("credsync: secret volume updated during the read")

// readSnapshot reads the keys of one version of srcDir.
func readSnapshot(srcDir string) (map[string]string, error) {
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
		return nil, fmt.Errorf("credsync: %w", err)
	}
	keys := map[string]string{}
	for _, name := range []string{AccessKeyIDFile, SecretAccessKeyFile, SessionTokenFile} {
		v, err := readValue(filepath.Join(dir, name))
		if errors.Is(err, os.ErrNotExist) {
			if target != "" && moved(srcDir, target) {
				return nil, errMoved
			}
			if name == SessionTokenFile {
				continue
			}
			return nil, fmt.Errorf("%w: %s has no %s", ErrInvalid, srcDir, name)
		}
		if err != nil {
			return nil, err
		}
		if v == "" && name != SessionTokenFile {
			return nil, fmt.Errorf("%w: %s is empty", ErrInvalid, filepath.Join(srcDir, name))
		}
		keys[name] = v
	}
	if target != "" && moved(srcDir, target) {
		return nil, errMoved
	}
	return keys, nil
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
