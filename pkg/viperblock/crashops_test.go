package viperblock

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/vfs"
)

// crashStore lets the first n mutating operations through, then fails every
// later one, as if the process died after its n-th write to the store.
type crashStore struct {
	backend.Store
	left atomic.Int64
}

func (c *crashStore) allow() error {
	if c.left.Add(-1) < 0 {
		return errCrash
	}
	return nil
}

func (c *crashStore) Put(ctx context.Context, k string, d []byte) error {
	if err := c.allow(); err != nil {
		return err
	}
	return c.Store.Put(ctx, k, d)
}

func (c *crashStore) PutIf(ctx context.Context, k string, d []byte, v backend.Version) (backend.Version, error) {
	if err := c.allow(); err != nil {
		return "", err
	}
	return c.Store.PutIf(ctx, k, d, v)
}

func (c *crashStore) Delete(ctx context.Context, k string) error {
	if err := c.allow(); err != nil {
		return err
	}
	return c.Store.Delete(ctx, k)
}

// TestCrashInsideOperations crashes snapshot, clone, delete and GC after
// each of their store writes in turn, then checks that everything that
// existed is intact, that retrying the operation succeeds, and that
// deleting everything leaves an empty store (nothing leaked for good).
func TestCrashInsideOperations(t *testing.T) {
	ctx := context.Background()
	img := func(seed byte, n int) []byte {
		b := make([]byte, n*BlockSize)
		for i := range b {
			b[i] = seed + byte(i/BlockSize)
		}
		return b
	}
	// Base state: volume a (16 blocks) with snapshot s1, clone b of s1 with
	// its own writes, and a's later writes (some trimmed) drained.
	base := backend.NewMem()
	o := Options{WALDir: "/wal", FS: vfs.NewMem(), Logger: quietLogger()}
	if err := CreateOnly(ctx, base, "a", 16*BlockSize); err != nil {
		t.Fatal(err)
	}
	a, _ := Open(ctx, base, "a", o)
	a.WriteAt(img(1, 16), 0)
	a.Snapshot(ctx, "s1")
	a.WriteAt(img(50, 4), 0)
	a.Trim(8*BlockSize, 4*BlockSize)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := Clone(ctx, base, "a", "s1", "b", 0); err != nil {
		t.Fatal(err)
	}
	bv, _ := Open(ctx, base, "b", o)
	bv.WriteAt(img(90, 2), 2*BlockSize)
	if err := bv.Close(); err != nil {
		t.Fatal(err)
	}
	// An orphan from a drain that crashed before its commit, in epoch 1.
	base.Put(ctx, chunkKey("a", 1<<40|999), []byte("orphan"))
	want := map[string][]byte{}
	read := func(s backend.Store, name string) []byte {
		vol, snap := splitParent(name)
		var v *Volume
		var err error
		if snap != "" {
			v, err = OpenSnapshot(ctx, s, vol, snap, Options{CacheBlocks: -1})
		} else {
			v, err = Open(ctx, s, vol, Options{ReadOnly: true, CacheBlocks: -1})
		}
		if err != nil {
			t.Fatalf("open %s: %v", name, err)
		}
		buf := make([]byte, v.Size())
		if _, err := v.ReadAt(buf, 0); err != nil {
			t.Fatalf("read %s: %v", name, err)
		}
		return buf
	}
	for _, n := range []string{"a", "a@s1", "b"} {
		want[n] = read(base, n)
	}

	ops := []struct {
		name string
		run  func(s backend.Store) error
		gone []string // what the operation removes from the expected state
	}{
		{"snapshot", func(s backend.Store) error {
			_, err := CreateSnapshot(ctx, s, "a", "s2", SnapshotOptions{})
			return err
		}, nil},
		{"snapshot-owner", func(s backend.Store) error {
			v, err := Open(ctx, s, "a", Options{WALDir: "/w", FS: vfs.NewMem(), Logger: quietLogger(), LeaseDuration: crashLease})
			if err != nil {
				return err
			}
			v.WriteAt(img(7, 1), 15*BlockSize)
			_, err = v.Snapshot(ctx, "s2")
			if cerr := v.Close(); err == nil {
				err = cerr
			}
			return err
		}, []string{"a"}},
		{"clone", func(s backend.Store) error { return Clone(ctx, s, "a", "s1", "c", 0) }, nil},
		{"clone-volume", func(s backend.Store) error { return CloneVolume(ctx, s, "b", "c", 0, SnapshotOptions{}) }, nil},
		{"delete-volume", func(s backend.Store) error { return Delete(ctx, s, "a") }, []string{"a"}},
		{"delete-clone", func(s backend.Store) error { return Delete(ctx, s, "b") }, []string{"b"}},
		{"delete-snapshot", func(s backend.Store) error { return DeleteSnapshot(ctx, s, "a", "s1") }, []string{"a@s1"}},
		{"gc", func(s backend.Store) error { _, err := GC(ctx, s, "a"); return err }, nil},
		{"gc-open", func(s backend.Store) error {
			v, err := Open(ctx, s, "b", Options{WALDir: "/w", FS: vfs.NewMem(), Logger: quietLogger(), LeaseDuration: crashLease})
			if err != nil {
				return err
			}
			defer v.Close()
			_, err = v.GC(ctx)
			return err
		}, nil},
		{"compact-open", func(s backend.Store) error {
			v, err := Open(ctx, s, "a", Options{WALDir: "/w", FS: vfs.NewMem(), Logger: quietLogger(), LeaseDuration: crashLease,
				Compaction: CompactionOptions{Disabled: true, ChunkLiveRatio: 1}})
			if err != nil {
				return err
			}
			defer v.Close()
			// Two drains leave a chunk half dead that no snapshot pins.
			v.WriteAt(img(30, 4), 12*BlockSize)
			if err := v.Drain(ctx); err != nil {
				return err
			}
			v.WriteAt(img(40, 2), 12*BlockSize)
			if err := v.Drain(ctx); err != nil {
				return err
			}
			rep, err := v.Compact(ctx)
			if err == nil && rep.ChunksRewritten == 0 {
				return fmt.Errorf("compaction rewrote nothing")
			}
			return err
		}, []string{"a"}},
	}
	defer func(g time.Duration) { internalSnapshotGrace = g }(internalSnapshotGrace)
	internalSnapshotGrace = 0 // the final cleanup's GC removes leftovers at once
	for _, op := range ops {
		t.Run(op.name, func(t *testing.T) {
			for n := int64(0); ; n++ {
				s := base.Clone()
				cs := &crashStore{Store: s}
				cs.left.Store(n)
				err := op.run(cs)
				finished := err == nil
				if err != nil && !errors.Is(err, errCrash) {
					t.Fatalf("crash after %d writes: unexpected error %v", n, err)
				}
				// Everything the operation does not remove is intact.
				for name, w := range want {
					if contains(op.gone, name) {
						continue
					}
					if got := read(s, name); !bytes.Equal(got, w) {
						t.Fatalf("crash after %d writes: %s changed", n, name)
					}
				}
				// Retrying succeeds (a crashed open leaves the volume
				// marked open: its next open and close clears that).
				if err := recoverOpen(ctx, s, "a"); err != nil {
					t.Fatalf("crash after %d writes: reopen: %v", n, err)
				}
				if err := recoverOpen(ctx, s, "b"); err != nil {
					t.Fatalf("crash after %d writes: reopen: %v", n, err)
				}
				if err := op.run(s); err != nil && !errors.Is(err, ErrNotFound) {
					t.Fatalf("crash after %d writes: retry: %v", n, err)
				}
				// Delete everything: nothing may be left.
				for _, v := range []string{"c", "b", "a"} {
					if _, err := GC(ctx, s, v); err != nil && !errors.Is(err, ErrNotFound) {
						t.Fatalf("crash after %d writes: gc: %v", n, err)
					}
					snaps, _ := listSnapshotObjects(ctx, s, v)
					for _, sn := range snaps {
						if err := DeleteSnapshot(ctx, s, v, sn.Label); err != nil && !errors.Is(err, ErrNotFound) {
							t.Fatalf("crash after %d writes: cleanup: %v", n, err)
						}
					}
					if err := Delete(ctx, s, v); err != nil && !errors.Is(err, ErrNotFound) {
						t.Fatalf("crash after %d writes: cleanup: %v", n, err)
					}
				}
				if keys, _ := s.List(ctx, ""); len(keys) > 0 {
					t.Fatalf("crash after %d writes: leaked %v", n, keys)
				}
				if finished {
					t.Logf("%s: crashed at each of its %d store writes", op.name, n)
					return
				}
			}
		})
	}
}

// crashLease is the lease of owners that a crash test crashes inside Open
// or an operation. A crashed owner's lease must run out before the next
// open can take the volume over; with the default 15 s that waiting was
// most of these tests' time. The owners run on memory stores, where their
// operations take milliseconds, so 2 s leaves their renewals ample room.
const crashLease = 2 * time.Second

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// recoverOpen opens and closes a volume if it exists, so a volume left
// marked open by a crashed owner is released.
func recoverOpen(ctx context.Context, s backend.Store, name string) error {
	v, err := Open(ctx, s, name, Options{WALDir: "/r", FS: vfs.NewMem(), Logger: quietLogger()})
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open %s: %w", name, err)
	}
	return v.Close()
}
