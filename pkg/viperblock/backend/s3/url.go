package s3

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

// ParseURL turns s3://bucket/prefix?params into a Config (see the package
// doc for the parameters).
func ParseURL(u *url.URL) (Config, error) {
	var cfg Config
	bad := func(format string, args ...any) (Config, error) {
		return Config{}, fmt.Errorf("%w: %s: %s", backend.ErrInvalidURL, u.Redacted(), fmt.Sprintf(format, args...))
	}
	if u.Scheme != "s3" {
		return bad("scheme must be s3")
	}
	if u.User != nil {
		// Not even the redacted URL: the user name may be an access key.
		return Config{}, fmt.Errorf("%w: s3://%s: credentials in the URL are not supported; use credentials_file= or the environment", backend.ErrInvalidURL, u.Host)
	}
	if u.Opaque != "" || u.Fragment != "" {
		return bad("must be s3://bucket[/prefix][?params]")
	}
	cfg.Bucket = u.Host
	if cfg.Bucket == "" {
		return bad("no bucket")
	}
	if strings.ContainsAny(cfg.Bucket, ":/") {
		return bad("bucket name %q has a port or a slash; put the server in endpoint=", cfg.Bucket)
	}
	cfg.Prefix = strings.Trim(u.Path, "/")
	if cfg.Prefix != "" {
		if err := backend.ValidateKey(cfg.Prefix); err != nil {
			return bad("prefix: %v", err)
		}
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return bad("query: %v", err)
	}
	pathStyleSet := false
	for k, vs := range q {
		if len(vs) != 1 {
			return bad("parameter %q given %d times", k, len(vs))
		}
		v := vs[0]
		switch k {
		case "endpoint":
			e, err := url.Parse(v)
			if err != nil || (e.Scheme != "http" && e.Scheme != "https") || e.Host == "" {
				return bad("endpoint must be an http:// or https:// URL")
			}
			if e.User != nil {
				return Config{}, fmt.Errorf("%w: s3://%s: credentials in the endpoint URL are not supported", backend.ErrInvalidURL, u.Host)
			}
			cfg.Endpoint = v
		case "region":
			cfg.Region = v
		case "path_style":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return bad("path_style: %v", err)
			}
			cfg.PathStyle, pathStyleSet = b, true
		case "credentials_file":
			if v == "" {
				return bad("credentials_file is empty")
			}
			cfg.CredentialsFile = v
		case "profile":
			cfg.Profile = v
		case "imds":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return bad("imds: %v", err)
			}
			cfg.IMDS = b
		case "max_attempts":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 100 {
				return bad("max_attempts must be 1-100")
			}
			cfg.MaxAttempts = n
		case "timeout":
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return bad("timeout must be a positive duration such as 30s")
			}
			cfg.AttemptTimeout = d
		case "max_backoff":
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return bad("max_backoff must be a positive duration such as 5s")
			}
			cfg.MaxBackoff = d
		default:
			return bad("unknown parameter %q (known: endpoint, region, path_style, credentials_file, profile, imds, max_attempts, timeout, max_backoff)", k)
		}
	}
	if !pathStyleSet {
		cfg.PathStyle = cfg.Endpoint != ""
	}
	return cfg, nil
}
