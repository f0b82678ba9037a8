package driver

import (
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSetupStoreSecret(t *testing.T) {
	src, state := t.TempDir(), t.TempDir()
	for name, v := range map[string]string{"accessKeyID": "AKIA-one", "secretAccessKey": "s3cr3t"} {
		if err := os.WriteFile(filepath.Join(src, name), []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	o := &Options{StoreSecretDir: src, Stores: Stores{
		"a":    "s3://bucket?region=us-east-1",
		"own":  "s3://bucket?credentials_file=%2Fetc%2Fmine",
		"file": "file:///var/tmp/store",
	}}
	s, err := o.SetupStoreSecret(filepath.Join(state, "credentials"))
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(o.Stores["a"])
	if err != nil {
		t.Fatal(err)
	}
	if got := u.Query().Get("credentials_file"); got != s.file {
		t.Errorf("store a: credentials_file=%q, want %q", got, s.file)
	}
	if o.Stores["own"] != "s3://bucket?credentials_file=%2Fetc%2Fmine" || o.Stores["file"] != "file:///var/tmp/store" {
		t.Errorf("stores with their own credentials or no S3 changed: %v", o.Stores)
	}
	b, err := os.ReadFile(s.file)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "AKIA-one") || !strings.Contains(string(b), "s3cr3t") {
		t.Errorf("credentials file lacks the keys")
	}
	if fi, err := os.Stat(s.file); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("credentials file mode: %v %v", fi.Mode(), err)
	}
	for _, v := range o.Stores {
		if strings.Contains(v, "s3cr3t") {
			t.Errorf("a secret reached a store URL: %s", v)
		}
	}
}

func TestSetupStoreSecretAbsent(t *testing.T) {
	o := &Options{StoreSecretDir: filepath.Join(t.TempDir(), "missing"), Stores: Stores{"a": "s3://bucket"}}
	s, err := o.SetupStoreSecret(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if o.Stores["a"] != "s3://bucket" {
		t.Errorf("store URL changed without a Secret: %s", o.Stores["a"])
	}
	s.Run(t.Context()) // returns at once: nothing to follow
	bad := &Options{StoreSecretDir: t.TempDir(), Stores: Stores{"a": "s3://bucket"}}
	if err := os.WriteFile(filepath.Join(bad.StoreSecretDir, "accessKeyID"), []byte("only-an-id"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := bad.SetupStoreSecret(t.TempDir()); err == nil {
		t.Error("a Secret without secretAccessKey was accepted")
	}
}
