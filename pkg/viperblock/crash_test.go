package viperblock

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/internal/testutil"
	"github.com/viperblock/viperblock-csi/internal/testutil/s3server"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	_ "github.com/viperblock/viperblock-csi/pkg/viperblock/backend/s3" // registers s3://
	"github.com/viperblock/viperblock-csi/pkg/viperblock/vfs"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/wal"
)

// crashModel tracks, per block, the content that must survive a crash (as of
// the last returned Flush) and the contents written since, any one of which
// may survive instead.
type crashModel struct {
	durable map[uint64][]byte   // absent: zeros
	since   map[uint64][][]byte // writes after the last flush, nil entry: zeros
	cur     map[uint64][]byte
	ever    map[uint64][][]byte // every content written (for rebuilds, which cannot recover trims)
}

func newCrashModel() *crashModel {
	return &crashModel{durable: map[uint64][]byte{}, since: map[uint64][][]byte{}, cur: map[uint64][]byte{}, ever: map[uint64][][]byte{}}
}

func (m *crashModel) write(b uint64, d []byte) {
	m.cur[b] = d
	m.since[b] = append(m.since[b], d)
	if d != nil {
		m.ever[b] = append(m.ever[b], d)
	}
}

func (m *crashModel) flush() {
	m.durable = make(map[uint64][]byte, len(m.cur))
	for b, d := range m.cur {
		m.durable[b] = d
	}
	m.since = map[uint64][][]byte{}
}

var zeroBlock = make([]byte, BlockSize)

func orZero(d []byte) []byte {
	if d == nil {
		return zeroBlock
	}
	return d
}

// verify checks every block against the model and resets the model to what
// the volume holds.
func (m *crashModel) verify(t *testing.T, v *Volume, blocks uint64, seed int64, iter int) {
	t.Helper()
	buf := make([]byte, blocks*BlockSize)
	if _, err := v.ReadAt(buf, 0); err != nil {
		t.Fatalf("seed %d iter %d: read: %v", seed, iter, err)
	}
	for b := uint64(0); b < blocks; b++ {
		got := buf[b*BlockSize : (b+1)*BlockSize]
		ok := bytes.Equal(got, orZero(m.durable[b]))
		for _, d := range m.since[b] {
			ok = ok || bytes.Equal(got, orZero(d))
		}
		if !ok {
			desc := "other"
			if bytes.Equal(got, zeroBlock) {
				desc = "zeros"
			}
			t.Logf("durable zero=%v since=%d; got %s", m.durable[b] == nil, len(m.since[b]), desc)
			t.Fatalf("seed %d iter %d: block %d holds neither its flushed content nor a later write (lost flushed write or torn block)", seed, iter, b)
		}
		if bytes.Equal(got, zeroBlock) {
			delete(m.cur, b)
		} else {
			m.cur[b] = append([]byte(nil), got...)
		}
	}
	m.flush()
}

func crashIters(def int) int {
	if s := os.Getenv("VB_CRASH_ITERS"); s != "" {
		if n, err := strconv.Atoi(s); err == nil {
			return n
		}
	}
	if testing.Short() {
		return def / 5
	}
	return def
}

// testSeed is the seed of a random test: VB_SEED (a VB_SEED that is not a
// number fails the test) or the clock, logged. Seeds printed signed by
// earlier versions rerun the same (testutil.ParseSeed).
func testSeed(t *testing.T) int64 {
	t.Helper()
	return int64(testutil.Seed(t))
}

// TestCrashRandom writes, flushes, trims and drains at random, crashes the
// machine at random moments (dropping a random share of unsynced data), and
// reopens, checking that nothing flushed is lost and no block is torn.
// The backend is either a memory store (outlives the crash, like S3), a
// file store on the crashing filesystem, or a real S3 server (versitygw,
// which outlives the crash too; fewer iterations, each costs round trips).
func TestCrashRandom(t *testing.T) {
	for _, fileStore := range []bool{false, true} {
		t.Run(fmt.Sprintf("fileStore=%v", fileStore), func(t *testing.T) {
			t.Parallel()
			seed := testSeed(t)
			rng := rand.New(rand.NewSource(seed))
			runCrash(t, rng, seed, crashIters(300), storeFor(t, fileStore), "", crashFormat{})
		})
	}
	// Encrypted and compressed: version 2 chunks, sealed WAL records.
	t.Run("sealed-zstd", func(t *testing.T) {
		t.Parallel()
		seed := testSeed(t)
		runCrash(t, rand.New(rand.NewSource(seed)), seed, crashIters(150), storeFor(t, true), "", sealedFormat(t, CompressionZstd))
	})
	t.Run("s3", func(t *testing.T) {
		t.Parallel()
		srv := s3server.Start(t)
		st, err := backend.Open(context.Background(), srv.URL("crash"))
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		seed := testSeed(t)
		rng := rand.New(rand.NewSource(seed))
		runCrash(t, rng, seed, crashIters(60), func(*vfs.MemFS) backend.Store { return st }, "", crashFormat{})
	})
}

// crashPoints are the engine's named crash points.
var crashPoints = []string{
	"wal.before-fsync", "wal.before-dir-sync", "wal.before-recycle-sync", "wal.before-recycle-rename",
	"wal.before-prep-sync", "wal.before-fill-sync",
	"wal.before-write-ahead",
	"drain.before-chunk-put", "drain.before-chunk-sync", "drain.before-commit", "drain.after-commit",
	"drain.before-skip-wal",
	"open.before-epoch-commit", "open.after-epoch-commit",
	"compact.before-chunk-put", "compact.before-chunk-sync", "compact.before-commit", "compact.after-commit",
	"compact.before-delete",
}

// TestCrashPoints crashes at each named point in turn, with plain volumes
// and (fewer iterations) with encrypted, compressed ones.
func TestCrashPoints(t *testing.T) {
	for _, p := range crashPoints {
		t.Run(p, func(t *testing.T) {
			seed := testSeed(t)
			runCrash(t, rand.New(rand.NewSource(seed)), seed, crashIters(40), storeFor(t, true), p, crashFormat{})
		})
		t.Run(p+"/sealed-lz4", func(t *testing.T) {
			if testing.Short() {
				// Too few iterations under -short to reach every point.
				t.Skip("the encrypted variant runs without -short")
			}
			seed := testSeed(t)
			runCrash(t, rand.New(rand.NewSource(seed)), seed, crashIters(20), storeFor(t, true), p, sealedFormat(t, CompressionLZ4))
		})
	}
}

// crashFormat is the kind of volume a crash run uses: plain (the zero
// value) or created with these options (their Keys open it too).
type crashFormat struct {
	create CreateOptions
}

func sealedFormat(t *testing.T, c Compression) crashFormat {
	return crashFormat{create: CreateOptions{Compression: c, Keys: testKeySource(t, 1)}}
}

// storeFor returns a store factory for runCrash: a memory store that
// outlives crashes (as an object store does), or a file store on the
// crashing filesystem itself.
func storeFor(t *testing.T, fileStore bool) func(fs *vfs.MemFS) backend.Store {
	mem := backend.NewMem()
	return func(fs *vfs.MemFS) backend.Store {
		if !fileStore {
			return mem
		}
		s, err := backend.NewFile(fs, "/store")
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
}

// runCrash runs iters crash/reopen cycles. newStore returns the backend as
// seen after a crash of the filesystem fs.
func runCrash(t *testing.T, rng *rand.Rand, seed int64, iters int, newStore func(fs *vfs.MemFS) backend.Store, force string, f crashFormat) {
	ctx := context.Background()
	const blocks = 96
	fs := vfs.NewMem()
	store := func() backend.Store { return newStore(fs) }
	keys := f.create.Keys
	if err := CreateVolume(ctx, store(), "vol", blocks*BlockSize, f.create); err != nil {
		t.Fatal(err)
	}
	model := newCrashModel()
	hits := 0 // crashes at the forced point
	// A forced crash point that has not fired yet gets more iterations
	// (up to four times as many), so that it is always exercised.
	for iter := 0; iter < iters || force != "" && hits == 0 && iter < 4*iters; iter++ {
		var crashMu sync.Mutex // guards crashed: the drain loop may crash too
		var crashed *vfs.MemFS
		isCrashed := func() bool { crashMu.Lock(); defer crashMu.Unlock(); return crashed != nil }
		target := ""
		if force != "" {
			target = force
		} else if rng.Intn(2) == 0 {
			target = crashPoints[rng.Intn(len(crashPoints))]
		}
		// Small slabs (64 KiB: a pending limit of 8 MiB) so that a few
		// writes fill some, and a WAL deferral bound at random: none
		// deferred (every filled slab written at once), a few records
		// (the writeback writes ahead nearly every write, oldest first),
		// or all of them (only a Flush writes; drains commit most data
		// without any WAL write).
		o := Options{WALDir: "/wal", FS: fs, CacheBlocks: 32, DrainInterval: time.Hour, DrainBytes: 8 << 20, MaxPendingBytes: 8 << 20,
			WALDeferBytes: []int64{-1, 1, 3 * wal.BlockRecordLen, 0}[rng.Intn(4)], Logger: quietLogger(),
			Compaction: CompactionOptions{Disabled: true}, Keys: keys} // compactions run as ops below
		if strings.HasPrefix(target, "open.") {
			o.LeaseDuration = crashLease // a crash inside Open leaves a lease to wait out
		}
		crashRng := rand.New(rand.NewSource(rng.Int63()))
		// midDrain, when set, is run once by the next drain as it uploads
		// its first chunk: writes, perhaps a trim, and a Flush while a
		// drain is under way (the Flush must make the sealed records the
		// drain is taking durable too, as the drain may never commit).
		var midDrain func()
		o.crash = func(p string) error {
			if p == "drain.before-chunk-put" {
				crashMu.Lock()
				f := midDrain
				midDrain = nil
				crashMu.Unlock()
				if f != nil {
					f()
				}
			}
			crashMu.Lock()
			defer crashMu.Unlock()
			if crashed != nil {
				return errCrash // the machine is down: nothing more happens
			}
			if p == target && crashRng.Intn(2) == 0 {
				hits++
				crashed = fs.CrashClone(crashRng)
				return errCrash
			}
			return nil
		}
		v, err := Open(ctx, store(), "vol", o)
		if err != nil && isCrashed() {
			fs = crashed // crashed while opening
			continue
		}
		if err != nil {
			t.Fatalf("seed %d iter %d: open: %v", seed, iter, err)
		}
		if iter > 0 {
			model.verify(t, v, blocks, seed, iter)
		}
		ops := 1 + rng.Intn(30)
		for i := 0; i < ops && !isCrashed(); i++ {
			switch r := rng.Intn(100); {
			case r < 60:
				b := uint64(rng.Intn(blocks))
				d := make([]byte, BlockSize)
				rng.Read(d)
				if rng.Intn(4) == 0 { // unaligned: patch part of the block
					cur := orZero(model.cur[b])
					in := rng.Intn(BlockSize - 1)
					n := 1 + rng.Intn(BlockSize-in)
					copy(d, cur)
					rng.Read(d[in : in+n])
					if _, err := v.WriteAt(d[in:in+n], int64(b)*BlockSize+int64(in)); err != nil && !isCrashed() {
						t.Fatalf("seed %d: write: %v", seed, err)
					}
				} else if _, err := v.WriteAt(d, int64(b)*BlockSize); err != nil && !isCrashed() {
					t.Fatalf("seed %d: write: %v", seed, err)
				}
				model.write(b, d)
			case r < 80:
				err := v.Flush()
				if isCrashed() {
					break
				}
				if err != nil {
					t.Fatalf("seed %d: flush: %v", seed, err)
				}
				model.flush()
			case r < 90:
				// A few blocks; a wide range, up to the whole volume; or
				// a burst of single-block discards in a random order
				// (ranges that merge and split in the pending trims).
				trim := func(b, n uint64) {
					if err := v.Trim(int64(b)*BlockSize, int64(n)*BlockSize); err != nil && !isCrashed() {
						t.Fatalf("seed %d: trim: %v", seed, err)
					}
					for x := b; x < b+n; x++ {
						model.write(x, nil)
						delete(model.cur, x)
					}
				}
				b := uint64(rng.Intn(blocks))
				switch rng.Intn(4) {
				case 0:
					if rng.Intn(3) == 0 {
						b = 0
					}
					trim(b, 1+uint64(rng.Intn(blocks-int(b))))
				case 1:
					span := 1 + rng.Intn(min(24, blocks-int(b)))
					for _, i := range rng.Perm(span) {
						if rng.Intn(4) != 0 && !isCrashed() {
							trim(b+uint64(i), 1)
						}
					}
				default:
					trim(b, min(uint64(1+rng.Intn(8)), blocks-b))
				}
			case r < 95:
				var midErr error
				if rng.Intn(2) == 0 {
					crashMu.Lock()
					midDrain = func() {
						for k := rng.Intn(3); k >= 0 && !isCrashed(); k-- {
							b := uint64(rng.Intn(blocks))
							d := make([]byte, BlockSize)
							rng.Read(d)
							if _, err := v.WriteAt(d, int64(b)*BlockSize); err != nil && !isCrashed() {
								midErr = fmt.Errorf("write during a drain: %w", err)
								return
							}
							model.write(b, d)
						}
						if rng.Intn(3) == 0 && !isCrashed() { // a trim the drain does not hold
							b := uint64(rng.Intn(blocks))
							n := min(uint64(1+rng.Intn(4)), blocks-b)
							if err := v.Trim(int64(b)*BlockSize, int64(n)*BlockSize); err != nil && !isCrashed() {
								midErr = fmt.Errorf("trim during a drain: %w", err)
								return
							}
							for x := b; x < b+n; x++ {
								model.write(x, nil)
								delete(model.cur, x)
							}
						}
						err := v.Flush()
						if isCrashed() {
							return
						}
						if err != nil {
							midErr = fmt.Errorf("flush during a drain: %w", err)
							return
						}
						model.flush()
					}
					crashMu.Unlock()
				}
				err := v.Drain(ctx)
				if midErr != nil {
					t.Fatalf("seed %d: %v", seed, midErr)
				}
				if err != nil && !isCrashed() {
					t.Fatalf("seed %d: drain: %v", seed, err)
				}
				crashMu.Lock()
				midDrain = nil // the drain had nothing to upload
				crashMu.Unlock()
			default:
				// Drain first, so the compaction has chunks to work on,
				// then compact whatever is below the live threshold.
				err := v.Drain(ctx)
				if err == nil {
					_, err = v.Compact(ctx)
				}
				if err != nil && !isCrashed() {
					t.Fatalf("seed %d: compact: %v", seed, err)
				}
			}
		}
		// Some points are reached only by background goroutines, at their
		// own pace: let them finish what the ops gave them to do, so that
		// a slow machine reaches these points as surely as a fast one.
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		switch {
		case target == "wal.before-write-ahead", strings.HasPrefix(target, "wal.before-recycle"):
			v.settleWriteback(sctx)
		case strings.HasPrefix(target, "wal.before-prep"), strings.HasPrefix(target, "wal.before-fill"):
			v.settleWriteback(sctx) // it hands the prep loop new segments
			v.settleWALPrep(sctx)
		}
		cancel()
		v.abandon()
		if !isCrashed() {
			crashed = fs.CrashClone(rng)
		}
		fs = crashed
	}
	if force != "" && hits == 0 {
		if testing.Short() {
			t.Logf("seed %d: crash point %s was not reached in %d iterations (-short)", seed, force, 4*iters)
		} else {
			t.Errorf("seed %d: crash point %s was never reached in %d iterations", seed, force, 4*iters)
		}
	}
	v, err := Open(ctx, store(), "vol", Options{WALDir: "/wal", FS: fs, Logger: quietLogger(), Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	model.verify(t, v, blocks, seed, iters)
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	// Closed cleanly: the backend alone, with an empty WAL, holds everything.
	v, err = Open(ctx, store(), "vol", Options{WALDir: "/wal2", FS: fs, Logger: quietLogger(), Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, blocks*BlockSize)
	if _, err := v.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	for b := uint64(0); b < blocks; b++ {
		if !bytes.Equal(buf[b*BlockSize:(b+1)*BlockSize], orZero(model.cur[b])) {
			t.Fatalf("seed %d: block %d differs after close and reopen elsewhere", seed, b)
		}
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	rebuildAfterCrash(t, ctx, store(), fs, model, blocks, seed, rng.Intn(2) == 0, keys)
}

// rebuildAfterCrash loses (or corrupts) the manifest of a volume the crash
// run left closed, rebuilds it from the chunks and checks what the rebuilt
// volume holds. Unreferenced chunks (from drains a crash cut short) are
// collected first: Rebuild counts every chunk it finds as written. Every
// block the model holds data for reads exactly that; a block the model
// holds as zeros (trimmed, or never written) reads zeros or some data that
// block once held, since a rebuild cannot recover trims.
func rebuildAfterCrash(t *testing.T, ctx context.Context, st backend.Store, fs *vfs.MemFS, model *crashModel, blocks uint64, seed int64, corrupt bool, keys KeySource) {
	t.Helper()
	if _, err := GC(ctx, st, "vol"); err != nil {
		t.Fatalf("seed %d: gc before the rebuild: %v", seed, err)
	}
	if keys != nil {
		// An encrypted volume's key table survives a lost manifest only
		// in its snapshots.
		if _, err := CreateSnapshot(ctx, st, "vol", "keys", SnapshotOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if corrupt {
		b, _, err := st.Get(ctx, manifestKey("vol"))
		if err != nil {
			t.Fatal(err)
		}
		b[len(b)/2] ^= 0x5a
		if err := st.Put(ctx, manifestKey("vol"), b); err != nil {
			t.Fatal(err)
		}
	} else if err := st.Delete(ctx, manifestKey("vol")); err != nil {
		t.Fatal(err)
	}
	if _, err := Rebuild(ctx, st, "vol", RebuildOptions{Size: int64(blocks) * BlockSize}); err != nil {
		t.Fatalf("seed %d: rebuild (corrupt=%v): %v", seed, corrupt, err)
	}
	v, err := Open(ctx, st, "vol", Options{WALDir: "/wal3", FS: fs, Logger: quietLogger(), Keys: keys})
	if err != nil {
		t.Fatalf("seed %d: open after the rebuild: %v", seed, err)
	}
	defer v.Close()
	buf := make([]byte, blocks*BlockSize)
	if _, err := v.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	for b := uint64(0); b < blocks; b++ {
		got := buf[b*BlockSize : (b+1)*BlockSize]
		if d := model.cur[b]; d != nil {
			if !bytes.Equal(got, d) {
				t.Fatalf("seed %d: block %d differs after the manifest was rebuilt (corrupt=%v)", seed, b, corrupt)
			}
			continue
		}
		ok := bytes.Equal(got, zeroBlock)
		for _, d := range model.ever[b] {
			ok = ok || bytes.Equal(got, d)
		}
		if !ok {
			t.Fatalf("seed %d: trimmed block %d holds data it never held after the rebuild", seed, b)
		}
	}
}
