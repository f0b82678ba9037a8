package driver

import (
	"errors"
	"testing"
)

// CSI secrets give the same credentials file under the canonical keys
// (those of the mounted Secret and the environment) and under the older
// ones; two names with different values are refused.
func TestCredentialsSpellings(t *testing.T) {
	want := "AWS_ACCESS_KEY_ID=AK\nAWS_SECRET_ACCESS_KEY=SK\nAWS_SESSION_TOKEN=TOK\n"
	for _, secrets := range []map[string]string{
		{"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK", "AWS_SESSION_TOKEN": "TOK"},
		{"awsAccessKeyID": "AK", "awsSecretAccessKey": "SK", "awsSessionToken": "TOK"},
		{"accessKeyID": "AK", "secretAccessKey": "SK", "sessionToken": "TOK"},
		{"AWS_ACCESS_KEY_ID": "AK", "awsAccessKeyID": "AK", "secretAccessKey": "SK", "AWS_SESSION_TOKEN": "TOK", "other": "x"},
	} {
		b, err := credentials(secrets)
		if err != nil || string(b) != want {
			t.Errorf("credentials(%v) = %q, %v; want %q", secrets, b, err, want)
		}
	}
	_, err := credentials(map[string]string{"AWS_ACCESS_KEY_ID": "AK", "accessKeyID": "OTHER", "AWS_SECRET_ACCESS_KEY": "SK"})
	if !errors.Is(err, errInvalidSecret) {
		t.Errorf("two values for one key: %v, want errInvalidSecret", err)
	}
	_, err = credentials(map[string]string{"accessKeyID": "AK"})
	if !errors.Is(err, errInvalidSecret) {
		t.Errorf("no secret key: %v, want errInvalidSecret", err)
	}
}
