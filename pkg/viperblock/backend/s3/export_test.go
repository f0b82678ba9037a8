package s3

import (
	"testing"
	"time"
)

// SetCredentialsCheck sets how often stores opened from now on check their
// credentials file, until t ends. Tests that call it must not be parallel.
func SetCredentialsCheck(t testing.TB, d time.Duration) {
	old := credentialsCheck
	credentialsCheck = d
	t.Cleanup(func() { credentialsCheck = old })
}
