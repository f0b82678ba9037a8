package viperblock

import (
	"testing"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/seal"
)

// testKeySource returns a KEK source whose key is the byte b repeated.
func testKeySource(t testing.TB, b byte) KeySource {
	t.Helper()
	var k [seal.KeySize]byte
	for i := range k {
		k[i] = b
	}
	return seal.NewFileSource(k, "test-key")
}
