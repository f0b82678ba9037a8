package viperblock

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand"
	"sort"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/vfs"
)

// The model: every volume and snapshot as a plain byte slice.
type model struct {
	vols  map[string][]byte
	snaps map[string][]byte // "vol@snap"
}

type modelRun struct {
	t      *testing.T
	rng    *rand.Rand
	seed   int64
	ctx    context.Context
	store  backend.Store
	fs     *vfs.MemFS
	m      model
	open   map[string]*Volume
	nextID int
	log    []string
}

func (r *modelRun) fatalf(format string, args ...any) {
	r.t.Helper()
	tail := r.log
	if len(tail) > 60 {
		tail = tail[len(tail)-60:]
	}
	r.t.Fatalf("seed %d: %s\nlast ops:\n  %s", r.seed, fmt.Sprintf(format, args...), joinLines(tail))
}

func joinLines(l []string) string {
	var b bytes.Buffer
	for i, s := range l {
		if i > 0 {
			b.WriteString("\n  ")
		}
		b.WriteString(s)
	}
	return b.String()
}

func (r *modelRun) opts() Options {
	return Options{WALDir: "/wal", FS: r.fs, CacheBlocks: 64, DrainInterval: time.Hour, DrainBytes: 1 << 40, Logger: quietLogger()}
}

func (r *modelRun) names(m map[string][]byte) []string {
	var n []string
	for k := range m {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

func (r *modelRun) pick(m map[string][]byte) string {
	n := r.names(m)
	if len(n) == 0 {
		return ""
	}
	return n[r.rng.Intn(len(n))]
}

func (r *modelRun) vol(name string) *Volume {
	if v := r.open[name]; v != nil {
		return v
	}
	v, err := Open(r.ctx, r.store, name, r.opts())
	if err != nil {
		r.fatalf("open %s: %v", name, err)
	}
	r.open[name] = v
	return v
}

func (r *modelRun) closeVol(name string) {
	if v := r.open[name]; v != nil {
		if err := v.Close(); err != nil {
			r.fatalf("close %s: %v", name, err)
		}
		delete(r.open, name)
	}
}

func (r *modelRun) check(name string, v *Volume, want []byte) {
	got := make([]byte, len(want))
	if _, err := v.ReadAt(got, 0); err != nil {
		r.fatalf("read %s: %v", name, err)
	}
	if !bytes.Equal(got, want) {
		for b := 0; b < len(want)/BlockSize; b++ {
			if !bytes.Equal(got[b*BlockSize:(b+1)*BlockSize], want[b*BlockSize:(b+1)*BlockSize]) {
				r.fatalf("%s differs from the model at block %d", name, b)
			}
		}
	}
}

func (r *modelRun) checkAll() {
	for _, name := range r.names(r.m.vols) {
		r.check(name, r.vol(name), r.m.vols[name])
	}
	for _, key := range r.names(r.m.snaps) {
		vol, snap := splitParent(key)
		s, err := OpenSnapshot(r.ctx, r.store, vol, snap, Options{CacheBlocks: -1, Logger: quietLogger()})
		if err != nil {
			r.fatalf("open snapshot %s: %v", key, err)
		}
		r.check(key, s, r.m.snaps[key])
	}
}

func (r *modelRun) step() {
	ctx := r.ctx
	switch op := r.rng.Intn(100); {
	case op < 35 && len(r.m.vols) > 0: // write
		name := r.pick(r.m.vols)
		img := r.m.vols[name]
		n := 1 + r.rng.Intn(min(3*BlockSize, len(img)))
		off := r.rng.Intn(len(img) - n + 1)
		p := make([]byte, n)
		r.rng.Read(p)
		r.log = append(r.log, fmt.Sprintf("write %s [%d,+%d)", name, off, n))
		if _, err := r.vol(name).WriteAt(p, int64(off)); err != nil {
			r.fatalf("write: %v", err)
		}
		copy(img[off:], p)
	case op < 42 && len(r.m.vols) > 0: // trim or zero
		name := r.pick(r.m.vols)
		img := r.m.vols[name]
		off := r.rng.Intn(len(img))
		n := r.rng.Intn(len(img) - off + 1)
		v := r.vol(name)
		if nb := len(img) / BlockSize; r.rng.Intn(3) == 0 {
			// Single-block discards of the blocks of a range, in a
			// random order, some skipped.
			r.log = append(r.log, fmt.Sprintf("discard blocks of %s [%d,+%d) one at a time", name, off, n))
			for _, b := range r.rng.Perm(nb) {
				if b*BlockSize < off || (b+1)*BlockSize > off+n || r.rng.Intn(4) == 0 {
					continue
				}
				if err := v.Trim(int64(b)*BlockSize, BlockSize); err != nil {
					r.fatalf("trim: %v", err)
				}
				clear(img[b*BlockSize : (b+1)*BlockSize])
			}
		} else if r.rng.Intn(2) == 0 {
			r.log = append(r.log, fmt.Sprintf("zero %s [%d,+%d)", name, off, n))
			if err := v.Zero(int64(off), int64(n)); err != nil {
				r.fatalf("zero: %v", err)
			}
			clear(img[off : off+n])
		} else {
			r.log = append(r.log, fmt.Sprintf("trim %s [%d,+%d)", name, off, n))
			if err := v.Trim(int64(off), int64(n)); err != nil {
				r.fatalf("trim: %v", err)
			}
			s := (off + BlockSize - 1) / BlockSize * BlockSize
			e := (off + n) / BlockSize * BlockSize
			if e > s {
				clear(img[s:e])
			}
		}
	case op < 47 && len(r.m.vols) > 0: // drain
		name := r.pick(r.m.vols)
		r.log = append(r.log, "drain "+name)
		if err := r.vol(name).Drain(ctx); err != nil {
			r.fatalf("drain: %v", err)
		}
	case op < 57 && len(r.m.vols) > 0: // snapshot: by the owner, or from outside
		name := r.pick(r.m.vols)
		r.nextID++
		snap := fmt.Sprintf("s%d", r.nextID)
		if v := r.open[name]; v != nil && r.rng.Intn(2) == 0 {
			r.log = append(r.log, fmt.Sprintf("snapshot %s@%s (owner)", name, snap))
			if _, err := v.Snapshot(ctx, snap); err != nil {
				r.fatalf("snapshot: %v", err)
			}
		} else {
			r.log = append(r.log, fmt.Sprintf("snapshot %s@%s (closed)", name, snap))
			r.vol(name) // after a crash, the newest data is in the WAL until an open replays it
			r.closeVol(name)
			if _, err := CreateSnapshot(ctx, r.store, name, snap, SnapshotOptions{}); err != nil {
				r.fatalf("snapshot: %v", err)
			}
		}
		r.m.snaps[parentRef(name, snap)] = append([]byte(nil), r.m.vols[name]...)
	case op < 65 && len(r.m.snaps) > 0: // clone a snapshot
		key := r.pick(r.m.snaps)
		vol, snap := splitParent(key)
		r.nextID++
		dst := fmt.Sprintf("c%d", r.nextID)
		grow := int64(r.rng.Intn(3)) * BlockSize
		r.log = append(r.log, fmt.Sprintf("clone %s -> %s (+%d)", key, dst, grow))
		size := int64(len(r.m.snaps[key])) + grow
		if err := Clone(ctx, r.store, vol, snap, dst, size); err != nil {
			r.fatalf("clone: %v", err)
		}
		img := make([]byte, size)
		copy(img, r.m.snaps[key])
		r.m.vols[dst] = img
	case op < 69 && len(r.m.vols) > 0: // clone a volume
		src := r.pick(r.m.vols)
		r.nextID++
		dst := fmt.Sprintf("c%d", r.nextID)
		r.log = append(r.log, fmt.Sprintf("clone volume %s -> %s", src, dst))
		r.vol(src)
		r.closeVol(src)
		if err := CloneVolume(ctx, r.store, src, dst, 0, SnapshotOptions{}); err != nil {
			r.fatalf("clone volume: %v", err)
		}
		r.m.vols[dst] = append([]byte(nil), r.m.vols[src]...)
	case op < 74 && len(r.m.snaps) > 0: // delete a snapshot
		key := r.pick(r.m.snaps)
		vol, snap := splitParent(key)
		r.log = append(r.log, "delete snapshot "+key)
		if err := DeleteSnapshot(ctx, r.store, vol, snap); err != nil {
			r.fatalf("delete snapshot: %v", err)
		}
		delete(r.m.snaps, key)
	case op < 78 && len(r.m.vols) > 1: // delete a volume
		name := r.pick(r.m.vols)
		r.log = append(r.log, "delete volume "+name)
		r.vol(name)
		r.closeVol(name)
		if err := Delete(ctx, r.store, name); err != nil {
			r.fatalf("delete: %v", err)
		}
		delete(r.m.vols, name)
		if _, err := Open(ctx, r.store, name, r.opts()); !errors.Is(err, ErrNotFound) {
			r.fatalf("deleted volume opens: %v", err)
		}
	case op < 84 && len(r.m.vols) > 0: // GC, open or closed
		name := r.pick(r.m.vols)
		if v := r.open[name]; v != nil {
			r.log = append(r.log, "gc (open) "+name)
			if _, err := v.GC(ctx); err != nil {
				r.fatalf("gc: %v", err)
			}
		} else {
			r.log = append(r.log, "gc (closed) "+name)
			if _, err := GC(ctx, r.store, name); err != nil {
				r.fatalf("gc: %v", err)
			}
		}
	case op < 88: // close a volume (reopens on next use)
		if name := r.pick(r.m.vols); name != "" {
			r.log = append(r.log, "close "+name)
			r.closeVol(name)
		}
	case op < 92: // crash everything after a flush; reopen replays the WALs
		r.log = append(r.log, "flush all, crash")
		for _, name := range r.names(r.m.vols) {
			if v := r.open[name]; v != nil {
				if err := v.Flush(); err != nil {
					r.fatalf("flush: %v", err)
				}
			}
		}
		for name, v := range r.open {
			v.abandon()
			delete(r.open, name)
		}
		r.fs = r.fs.CrashClone(r.rng)
	default:
		if len(r.m.vols) < 6 {
			r.nextID++
			name := fmt.Sprintf("v%d", r.nextID)
			size := int64(1+r.rng.Intn(24)) * BlockSize
			r.log = append(r.log, fmt.Sprintf("create %s %d", name, size))
			if err := CreateOnly(ctx, r.store, name, size); err != nil {
				r.fatalf("create: %v", err)
			}
			r.m.vols[name] = make([]byte, size)
		}
	}
}

// TestModelSnapshotsClones runs random sequences of writes, trims, zeroes,
// drains, snapshots, clones, deletes, GC, closes and crashes against the
// engine and a trivially correct model, comparing every volume and snapshot
// after each step, then deletes everything and expects an empty store.
func TestModelSnapshotsClones(t *testing.T) {
	for _, fileStore := range []bool{false, true} {
		t.Run(fmt.Sprintf("fileStore=%v", fileStore), func(t *testing.T) {
			seed := testSeed(t)
			runModel(t, seed, crashIters(400), func(fs *vfs.MemFS) backend.Store {
				if !fileStore {
					return backend.NewMem()
				}
				s, err := backend.NewFile(vfs.NewMem(), "/store")
				if err != nil {
					t.Fatal(err)
				}
				return s
			})
		})
	}
}

func runModel(t *testing.T, seed int64, steps int, newStore func(*vfs.MemFS) backend.Store) {
	r := &modelRun{t: t, rng: rand.New(rand.NewSource(seed)), seed: seed, ctx: context.Background(),
		fs: vfs.NewMem(), m: model{vols: map[string][]byte{}, snaps: map[string][]byte{}}, open: map[string]*Volume{}}
	r.store = newStore(r.fs)
	for i := 0; i < steps; i++ {
		r.step()
		if i%10 == 9 {
			r.checkAll()
		}
	}
	r.checkAll()
	// Delete everything, in random order; the store must end up empty.
	for len(r.m.vols)+len(r.m.snaps) > 0 {
		if len(r.m.snaps) > 0 && (len(r.m.vols) == 0 || r.rng.Intn(2) == 0) {
			key := r.pick(r.m.snaps)
			vol, snap := splitParent(key)
			if err := DeleteSnapshot(r.ctx, r.store, vol, snap); err != nil {
				r.fatalf("final delete snapshot %s: %v", key, err)
			}
			delete(r.m.snaps, key)
		} else {
			name := r.pick(r.m.vols)
			r.vol(name)
			r.closeVol(name)
			if err := Delete(r.ctx, r.store, name); err != nil {
				r.fatalf("final delete %s: %v", name, err)
			}
			delete(r.m.vols, name)
		}
		r.checkAll()
	}
	keys, err := r.store.List(r.ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) > 0 {
		r.fatalf("store not empty after deleting everything: %v", keys)
	}
}
