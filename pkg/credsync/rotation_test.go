package credsync_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/internal/testutil/s3server"
	"github.com/viperblock/viperblock-csi/pkg/credsync"
	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	s3store "github.com/viperblock/viperblock-csi/pkg/viperblock/backend/s3"
)

// TestVolumeSurvivesKeyRotation is the rotation path end to end, as the
// node plugin runs it: a Secret volume with account A's key, Run keeping a
// credentials file in step, a volume open on versitygw through that file
// and draining on its own. The Secret is swapped to account B and A is
// deleted on the server right after; writes, flushes and drains go on, and
// Close drains the last writes with B alone.
func TestVolumeSurvivesKeyRotation(t *testing.T) {
	t.Parallel()
	srv := s3server.StartWithIAM(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, k := range [][2]string{{"vbvolA", "secretA0123456789"}, {"vbvolB", "secretB0123456789"}} {
		if err := srv.CreateUser(ctx, k[0], k[1]); err != nil {
			t.Fatal(err)
		}
	}
	vol := newSecretVolume(t, keys("vbvolA", "secretA0123456789"))
	credsFile := filepath.Join(t.TempDir(), "run", "store.env")
	if _, err := credsync.Sync(vol.dir, credsFile); err != nil {
		t.Fatal(err)
	}
	runCtx, stopRun := context.WithCancel(ctx)
	runDone := make(chan error, 1)
	go func() { runDone <- credsync.Run(runCtx, vol.dir, credsFile, 20*time.Millisecond) }()
	defer func() { stopRun(); <-runDone }()

	st, err := backend.Open(ctx, s3server.StoreURL(srv.Bucket, "vols", srv.Endpoint, credsFile))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	opts := vb.Options{
		WALDir:        t.TempDir(),
		CacheBlocks:   64,
		DrainInterval: 20 * time.Millisecond,
		Logger:        slog.New(slog.DiscardHandler),
	}
	v, err := vb.Create(ctx, st, "rot", 8<<20, opts)
	if err != nil {
		t.Fatal(err)
	}
	block := func(i int) []byte {
		b := bytes.Repeat([]byte{byte(i)}, vb.BlockSize)
		binary.LittleEndian.PutUint32(b, uint32(i))
		return b
	}
	write := func(from, to int) {
		t.Helper()
		for i := from; i < to; i++ {
			if _, err := v.WriteAt(block(i), int64(i%256)*vb.BlockSize); err != nil {
				t.Fatalf("write %d: %v", i, err)
			}
			if i%8 == 7 {
				if err := v.Flush(); err != nil {
					t.Fatalf("flush after write %d: %v", i, err)
				}
			}
		}
		if err := v.Drain(ctx); err != nil {
			t.Fatalf("drain after write %d: %v", to-1, err)
		}
	}
	write(0, 64)

	vol.update(keys("vbvolB", "secretB0123456789"))
	if err := srv.DeleteUser(ctx, "vbvolA"); err != nil {
		t.Fatal(err)
	}
	write(64, 256)
	for i := 256; i < 300; i++ { // left for Close to drain
		if _, err := v.WriteAt(block(i), int64(i%256)*vb.BlockSize); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	if err := v.Close(); err != nil {
		t.Fatalf("Close (drains with the new key only): %v", err)
	}
	s3 := st.(*s3store.Store).Stats()
	t.Logf("store stats %+v", s3)
	if s3.CredentialReloads != 1 {
		t.Errorf("CredentialReloads %d, want 1", s3.CredentialReloads)
	}

	// Everything reads back on a fresh open, with the new key.
	v2, err := vb.Open(ctx, st, "rot", vb.Options{WALDir: t.TempDir(), ReadOnly: true, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer v2.Close()
	got := make([]byte, vb.BlockSize)
	for b := 0; b < 256; b++ {
		want := b // the last write of block b: b, or b+256 if there was one
		if b+256 < 300 {
			want = b + 256
		}
		if _, err := v2.ReadAt(got, int64(b)*vb.BlockSize); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, block(want)) {
			t.Fatalf("block %d holds write %d, want %d", b, binary.LittleEndian.Uint32(got), want)
		}
	}
}
