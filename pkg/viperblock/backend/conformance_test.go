package backend_test

import (
	"testing"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend/backendtest"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/vfs"
)

func TestMemConformance(t *testing.T) {
	t.Parallel()
	backendtest.Run(t, func(t *testing.T) backend.Store { return backend.NewMem() })
}

// fileKnownFailures lists the File store's reported conformance failures.
// Delete an entry once file.go is fixed.
var fileKnownFailures = backendtest.Options{Skip: map[string]string{
	"GetRangeEmptyPastEnd": "File.GetRange(off > size, n == 0) returns no error instead of ErrRange",
	"DeleteMissingDir":     "File.Delete of a key whose directory does not exist fails in SyncDir instead of returning nil",
	"PrefixIsNotAnObject":  "File.Get/GetRange of a directory fail with EISDIR instead of ErrNotFound; File.Delete of a non-empty directory fails with ENOTEMPTY",
	"ListSortOrder":        "File.List returns directory-walk order, not byte order (\"vol/x\" before \"vol-2/x\")",
}}

func TestFileConformance(t *testing.T) {
	t.Parallel()
	backendtest.RunWithOptions(t, fileKnownFailures, func(t *testing.T) backend.Store {
		s, err := backend.NewFile(vfs.Default, t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

// TestFileOnMemFSConformance runs the suite over the in-memory filesystem
// the engine's crash tests use.
func TestFileOnMemFSConformance(t *testing.T) {
	t.Parallel()
	backendtest.RunWithOptions(t, fileKnownFailures, func(t *testing.T) backend.Store {
		s, err := backend.NewFile(vfs.NewMem(), "/store")
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

func TestPrefixedConformance(t *testing.T) {
	t.Parallel()
	backendtest.Run(t, func(t *testing.T) backend.Store {
		s, err := backend.Prefixed(backend.NewMem(), "tenant/pool")
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}
