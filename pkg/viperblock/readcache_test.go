package viperblock_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/internal/testutil/s3server"
	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

// waitFills waits until the volume's read cache holds n chunks.
func waitFills(t *testing.T, v *vb.Volume, n int) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for v.Stats().ReadCache.Objects < n {
		if time.Now().After(deadline) {
			t.Fatalf("read cache holds %+v, want %d chunks", v.Stats().ReadCache, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestReadCacheS3 reads a volume on a real S3 server through the chunk read
// cache: the data is right, the second pass costs the store no request,
// a damaged local copy is read again from the store, and Close removes the
// cache.
func TestReadCacheS3(t *testing.T) {
	srv := s3server.Start(t)
	u := srv.URL("readcache")
	ctx := context.Background()
	const size = 3 * 4 << 20 // three chunks
	v, err := vb.Create(ctx, openS3(t, u), "rc", size, vb.Options{WALDir: t.TempDir(), Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, size)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range want {
		want[i] = byte(rng.Uint32())
	}
	if _, err := v.WriteAt(want, 0); err != nil {
		t.Fatal(err)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}

	st, stats := backend.Count(openS3(t, u))
	wal := t.TempDir()
	r, err := vb.Open(ctx, st, "rc", vb.Options{WALDir: wal, Logger: quiet(), CacheBlocks: -1, ReadAheadBlocks: -1, ReadCacheBytes: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	check := func(pass string) {
		t.Helper()
		p := make([]byte, vb.BlockSize)
		for _, b := range rng.Perm(size / vb.BlockSize) {
			off := int64(b) * vb.BlockSize
			if _, err := r.ReadAt(p, off); err != nil {
				t.Fatalf("%s: read block %d: %v", pass, b, err)
			}
			if !bytes.Equal(p, want[off:off+vb.BlockSize]) {
				t.Fatalf("%s: block %d differs", pass, b)
			}
		}
	}
	check("first pass")
	waitFills(t, r, 3)
	gets := stats.Snapshot()[backend.OpGet].OK
	hits := r.Stats().ReadCache.Hits
	check("second pass")
	if n := stats.Snapshot()[backend.OpGet].OK - gets; n != 0 {
		t.Fatalf("second pass asked the store %d times; the read cache holds every chunk", n)
	}
	if got := r.Stats().ReadCache.Hits - hits; got != size/vb.BlockSize {
		t.Fatalf("second pass: %d read cache hits, want %d", got, size/vb.BlockSize)
	}

	// Damage every cached copy: reads must still return the stored data,
	// from the store, and the copies be fetched again.
	dir := filepath.Join(wal, "rc", "readcache")
	files, _ := filepath.Glob(filepath.Join(dir, "*"))
	if len(files) != 3 {
		t.Fatalf("read cache directory holds %v, want 3 files", files)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i := 4096; i < len(b); i += 4096 {
			b[i] ^= 0xff
		}
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	check("damaged copies")
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Close left the read cache directory: %v", err)
	}
}
