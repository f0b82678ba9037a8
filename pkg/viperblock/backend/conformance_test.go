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

func TestFileConformance(t *testing.T) {
	t.Parallel()
	backendtest.Run(t, func(t *testing.T) backend.Store {
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
	backendtest.Run(t, func(t *testing.T) backend.Store {
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
