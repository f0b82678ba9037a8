package s3server

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// StartWithIAM starts a server like Start whose gateway also holds user
// accounts, each with its own access key, in versitygw's internal IAM (a
// directory next to the data, --iam-dir), so a test can have several keys
// valid at once and revoke one. The IAM cache is off (--iam-cache-disable):
// a deleted or changed account is refused by the very next request.
//
// The root account (AccessKey, SecretKey, CredentialsFile) stays valid
// throughout; accounts are managed with CreateUser, DeleteUser and
// SetUserSecret, which run `versitygw admin` against the gateway's own
// admin API.
func StartWithIAM(t testing.TB) *Server {
	t.Helper()
	iamDir := filepath.Join(t.TempDir(), "iam")
	if err := os.Mkdir(iamDir, 0o700); err != nil {
		t.Fatal(err)
	}
	return start(t, []string{"--iam-dir", iamDir, "--iam-cache-disable"})
}

// CreateUser creates an account with the access key and secret, in the
// admin role, which reaches every bucket (the test bucket belongs to root).
func (s *Server) CreateUser(ctx context.Context, accessKey, secretKey string) error {
	return s.admin(ctx, "create-user", "--access", accessKey, "--secret", secretKey, "--role", "admin")
}

// DeleteUser deletes an account: its key is refused from then on
// (InvalidAccessKeyId).
func (s *Server) DeleteUser(ctx context.Context, accessKey string) error {
	return s.admin(ctx, "delete-user", "--access", accessKey)
}

// SetUserSecret gives an account a new secret: requests signed with the old
// one are refused from then on (SignatureDoesNotMatch).
func (s *Server) SetUserSecret(ctx context.Context, accessKey, secretKey string) error {
	return s.admin(ctx, "update-user", "--access", accessKey, "--secret", secretKey)
}

// admin runs `versitygw admin ARGS` as root. The root credentials go
// through the environment; the test accounts' own keys are on the command
// line, which `versitygw admin` offers no other way for.
func (s *Server) admin(ctx context.Context, args ...string) error {
	bin := Binary()
	if bin == "" {
		return fmt.Errorf("s3server: versitygw not found")
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"admin", "--endpoint-url", s.Endpoint, "--region", Region}, args...)...)
	cmd.Env = append(os.Environ(),
		"ADMIN_ACCESS_KEY_ID="+s.AccessKey,
		"ADMIN_SECRET_ACCESS_KEY="+s.SecretKey,
	)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("s3server: versitygw admin %s: %v\n%s", args[0], err, out)
	}
	return nil
}
