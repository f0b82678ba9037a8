package s3

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
)

// credentialsRefresh is how long credentials read from a file are used before
// the file is read again.
const credentialsRefresh = 5 * time.Minute

// fileCredentials reads an env-style credentials file (see the package doc).
// Its errors name the file and line, never the content.
type fileCredentials struct{ path string }

func (f fileCredentials) Retrieve(context.Context) (aws.Credentials, error) {
	b, err := os.ReadFile(f.path)
	if err != nil {
		return aws.Credentials{}, fmt.Errorf("viperblock/backend/s3: credentials file: %w", err)
	}
	creds, err := parseCredentials(b)
	if err != nil {
		return aws.Credentials{}, fmt.Errorf("viperblock/backend/s3: credentials file %s: %w", f.path, err)
	}
	creds.Source = "viperblock credentials_file"
	creds.CanExpire = true
	creds.Expires = time.Now().Add(credentialsRefresh)
	return creds, nil
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
