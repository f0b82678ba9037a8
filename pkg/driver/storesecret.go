package driver

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"k8s.io/klog/v2"

	"github.com/viperblock/viperblock-csi/pkg/credsync"
)

// storeSecretInterval is how often the mounted Secret is compared with the
// credentials file. The kubelet's own update of a Secret volume takes up to
// about a minute; this adds at most its own period.
const storeSecretInterval = 10 * time.Second

// StoreSecret keeps the stores' credentials file in step with a Kubernetes
// Secret mounted as files (--store-secret-dir: AWS_ACCESS_KEY_ID,
// AWS_SECRET_ACCESS_KEY, optional AWS_SESSION_TOKEN; the older accessKeyID,
// secretAccessKey and sessionToken are still read). The file is what the engine
// reads (credentials_file=), and the engine follows changes to it, so keys
// rotated in the Secret reach every running volume server without a
// restage. A volume staged with CSI node-stage secrets keeps its own
// per-volume file, which the CSI secrets fill once, at stage.
type StoreSecret struct {
	src, file string
}

// SetupStoreSecret reads o.StoreSecretDir once, writes the credentials
// file into dir, and points every S3 store URL that names no credentials
// of its own at it. It returns nil when no directory is configured, and a
// StoreSecret that does nothing when the Secret is absent (it is optional:
// the store then uses the AWS default credential chain).
func (o *Options) SetupStoreSecret(dir string) (*StoreSecret, error) {
	if o.StoreSecretDir == "" {
		return nil, nil
	}
	s := &StoreSecret{src: o.StoreSecretDir, file: filepath.Join(dir, "store.env")}
	if !credsync.HasAccessKey(s.src) {
		klog.InfoS("no store Secret mounted; stores use their URL's credentials or the default chain", "dir", s.src)
		s.src = ""
		return s, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("store credentials: %w", err)
	}
	if _, err := credsync.Sync(s.src, s.file); err != nil {
		return nil, fmt.Errorf("store credentials from %s: %w", s.src, err)
	}
	for name, raw := range o.Stores {
		u, err := url.Parse(raw)
		if err != nil || u.Scheme != "s3" || u.Query().Has("credentials_file") {
			continue
		}
		if o.Stores[name], err = withCredentialsFile(raw, s.file); err != nil {
			return nil, err
		}
	}
	klog.InfoS("store credentials follow the mounted Secret", "dir", s.src, "file", s.file)
	return s, nil
}

// Run keeps the credentials file in step with the Secret until ctx ends.
func (s *StoreSecret) Run(ctx context.Context) {
	if s == nil || s.src == "" {
		return
	}
	ctx = klog.NewContext(ctx, klog.Background().WithValues("secret", s.src))
	if err := credsync.Run(ctx, s.src, s.file, storeSecretInterval); err != nil {
		klog.ErrorS(err, "store credentials: following the Secret stopped")
	}
}
