package s3server

import (
	"context"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

func TestStartStop(t *testing.T) {
	srv := Start(t)
	ctx := context.Background()
	c := srv.Client()
	if _, err := c.PutObject(ctx, &s3.PutObjectInput{Bucket: &srv.Bucket, Key: aws.String("a/b"), Body: strings.NewReader("hello")}); err != nil {
		t.Fatalf("PutObject: %v\n%s", err, srv.Log())
	}
	out, err := c.GetObject(ctx, &s3.GetObjectInput{Bucket: &srv.Bucket, Key: aws.String("a/b")})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(out.Body)
	out.Body.Close()
	if string(b) != "hello" {
		t.Fatalf("GetObject = %q", b)
	}
	// The posix backend keeps the object as a file.
	if d, err := os.ReadFile(srv.Dir + "/" + srv.Bucket + "/a/b"); err != nil || string(d) != "hello" {
		t.Fatalf("posix file: %q, %v", d, err)
	}
	creds, err := os.ReadFile(srv.CredentialsFile)
	if err != nil || !strings.Contains(string(creds), "AWS_SECRET_ACCESS_KEY="+srv.SecretKey) {
		t.Fatalf("credentials file: %v", err)
	}
	if !strings.Contains(srv.URL("p"), "credentials_file=") || strings.Contains(srv.URL("p"), srv.SecretKey) {
		t.Fatalf("URL %q should name the credentials file, not the secret", srv.URL("p"))
	}
	srv.Stop()
	addr := strings.TrimPrefix(srv.Endpoint, "http://")
	if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		conn.Close()
		t.Fatalf("server still listening on %s after Stop", addr)
	}
}
