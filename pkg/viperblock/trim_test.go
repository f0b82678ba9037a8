package viperblock

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/vfs"
)

// TestTrimmedLater checks the sweep that finds writes a newer trim covers
// against the plain definition, on random trims and writes.
func TestTrimmedLater(t *testing.T) {
	seed := testSeed(t)
	rng := rand.New(rand.NewSource(seed))
	for round := 0; round < 200; round++ {
		blocks := 1 + rng.Intn(300)
		var trims []trimRange
		var writes []blockSeq
		seqs := rng.Perm(1 + rng.Intn(400))
		for _, s := range seqs {
			b := uint64(rng.Intn(blocks))
			if rng.Intn(3) == 0 {
				n := uint64(1 + rng.Intn(4))
				if rng.Intn(6) == 0 {
					n = uint64(1 + rng.Intn(blocks))
				}
				trims = append(trims, trimRange{b, n, uint64(s) + 1})
				if rng.Intn(4) == 0 { // as logged in several shards
					trims = append(trims, trimRange{b, n, uint64(s) + 1})
				}
			} else {
				writes = append(writes, blockSeq{b, uint64(s) + 1})
			}
		}
		dead := trimmedLater(trims, writes)
		for i, w := range writes {
			want := false
			for _, tr := range trims {
				if tr.seq > w.seq && w.block >= tr.start && w.block < tr.start+tr.count {
					want = true
				}
			}
			if got := dead != nil && dead[i]; got != want {
				t.Fatalf("seed %d round %d: write of block %d at seq %d: dead %v, want %v (trims %v)", seed, round, w.block, w.seq, got, want, trims)
			}
		}
	}
}

// downStore fails chunk uploads and manifest commits while down, as an
// unreachable store would: drains fail, everything else goes on.
type downStore struct {
	backend.Store
	down atomic.Bool
}

var errDown = errors.New("injected: store unreachable")

func (d *downStore) failing(k string) bool {
	return d.down.Load() && (strings.Contains(k, "/chunks/") || strings.HasSuffix(k, "/manifest"))
}

func (d *downStore) Put(ctx context.Context, k string, b []byte) error {
	if d.failing(k) {
		return errDown
	}
	return d.Store.Put(ctx, k, b)
}

func (d *downStore) PutIf(ctx context.Context, k string, b []byte, v backend.Version) (backend.Version, error) {
	if d.failing(k) {
		return "", errDown
	}
	return d.Store.PutIf(ctx, k, b, v)
}

// trimModel is a volume as plain bytes, with which blocks are holes (never
// written, or trimmed since their last write).
type trimModel struct {
	data []byte
	hole []bool
}

// TestTrimRangesModel runs a volume through random single-block discard
// bursts, wide trims, zeroes, writes into trimmed ranges, reads, drains
// (some failing, some in the background), crashes with a replay, moves to
// another node (adopting the store log in the durability class "store"),
// snapshots and clones, comparing every block's content and whether
// Extents reports it as a hole with a model.
func TestTrimRangesModel(t *testing.T) {
	for _, class := range []Durability{DurabilityNode, DurabilityStore} {
		t.Run(string(class), func(t *testing.T) {
			seed := testSeed(t)
			runTrimModel(t, seed, class, crashIters(300))
		})
	}
}

func runTrimModel(t *testing.T, seed int64, class Durability, steps int) {
	ctx := context.Background()
	rng := rand.New(rand.NewSource(seed))
	const blocks = 1024
	const size = blocks * BlockSize
	store := &downStore{Store: backend.NewMem()}
	if err := CreateWithClass(ctx, store, "t", size, class); err != nil {
		t.Fatal(err)
	}
	fs := vfs.NewMem()
	walDir := "/wal0"
	o := func() Options {
		// Small drain thresholds: the drain loop runs alongside.
		return Options{WALDir: walDir, FS: fs, CacheBlocks: 64, DrainInterval: 50 * time.Millisecond,
			DrainBytes: 256 << 10, MaxPendingBytes: 64 << 20, LeaseDuration: MinLeaseDuration, Logger: quietLogger()}
	}
	v, err := Open(ctx, store, "t", o())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { v.Close() }()
	m := &trimModel{data: make([]byte, size), hole: make([]bool, blocks)}
	for i := range m.hole {
		m.hole[i] = true
	}
	snaps := map[string]*trimModel{}
	var log []string
	fail := func(format string, args ...any) {
		t.Helper()
		tail := log
		if len(tail) > 40 {
			tail = tail[len(tail)-40:]
		}
		t.Fatalf("seed %d: %s\nlast ops:\n  %s", seed, fmt.Sprintf(format, args...), strings.Join(tail, "\n  "))
	}
	version := 0
	write := func(b, n int) {
		version++
		p := make([]byte, n*BlockSize)
		for i := 0; i < len(p); i += 8 {
			blk := b + i/BlockSize
			p[i], p[i+1], p[i+2], p[i+3] = byte(blk), byte(blk>>8), byte(version), byte(version>>8)
			p[i+4] = 0xa5
		}
		if _, err := v.WriteAt(p, int64(b)*BlockSize); err != nil {
			fail("write [%d,+%d): %v", b, n, err)
		}
		copy(m.data[b*BlockSize:], p)
		for x := b; x < b+n; x++ {
			m.hole[x] = false
		}
	}
	trim := func(b, n int) {
		if err := v.Trim(int64(b)*BlockSize, int64(n)*BlockSize); err != nil {
			fail("trim [%d,+%d): %v", b, n, err)
		}
		clear(m.data[b*BlockSize : (b+n)*BlockSize])
		for x := b; x < b+n; x++ {
			m.hole[x] = true
		}
	}
	checkVol := func(what string, vol *Volume, want *trimModel) {
		t.Helper()
		got := make([]byte, size)
		if _, err := vol.ReadAt(got, 0); err != nil {
			fail("%s: read: %v", what, err)
		}
		if !bytes.Equal(got, want.data) {
			for b := 0; b < blocks; b++ {
				if !bytes.Equal(got[b*BlockSize:(b+1)*BlockSize], want.data[b*BlockSize:(b+1)*BlockSize]) {
					fail("%s: block %d differs from the model (model hole %v)", what, b, want.hole[b])
				}
			}
		}
		ext, err := vol.Extents(0, size)
		if err != nil {
			fail("%s: extents: %v", what, err)
		}
		next := int64(0)
		for _, e := range ext {
			if e.Offset != next || e.Offset%BlockSize != 0 || e.Length%BlockSize != 0 {
				fail("%s: extents not contiguous and aligned: %+v", what, ext)
			}
			for b := e.Offset / BlockSize; b < (e.Offset+e.Length)/BlockSize; b++ {
				if e.Zero != want.hole[b] {
					fail("%s: Extents says block %d is a hole: %v, model: %v", what, b, e.Zero, want.hole[b])
				}
			}
			next = e.Offset + e.Length
		}
		if next != size {
			fail("%s: extents end at %d", what, next)
		}
	}
	for step := 0; step < steps; step++ {
		switch op := rng.Intn(100); {
		case op < 25: // a burst of single-block discards, some runs adjacent, with writes among them
			base := rng.Intn(blocks)
			span := 1 + rng.Intn(min(256, blocks-base))
			log = append(log, fmt.Sprintf("discard burst in [%d,+%d)", base, span))
			for _, i := range rng.Perm(span) {
				if rng.Intn(3) == 0 {
					continue
				}
				trim(base+i, 1)
				if rng.Intn(20) == 0 {
					write(base+rng.Intn(span), 1)
				}
			}
		case op < 33: // a wide trim, sometimes of the whole volume
			b, n := 0, blocks
			if rng.Intn(3) != 0 {
				b = rng.Intn(blocks)
				n = 1 + rng.Intn(blocks-b)
			}
			log = append(log, fmt.Sprintf("trim [%d,+%d)", b, n))
			trim(b, n)
		case op < 38: // zero, unaligned
			off := rng.Intn(size)
			n := rng.Intn(min(size-off, 64*BlockSize) + 1)
			log = append(log, fmt.Sprintf("zero [%d,+%d) bytes", off, n))
			if err := v.Zero(int64(off), int64(n)); err != nil {
				fail("zero: %v", err)
			}
			clear(m.data[off : off+n])
			for b := off / BlockSize; n > 0 && b < (off+n+BlockSize-1)/BlockSize; b++ {
				// Whole blocks are trimmed, edge blocks written with zeros.
				m.hole[b] = b*BlockSize >= off && (b+1)*BlockSize <= off+n
			}
		case op < 60: // writes, often into trimmed ranges
			b := rng.Intn(blocks)
			n := 1 + rng.Intn(min(8, blocks-b))
			log = append(log, fmt.Sprintf("write [%d,+%d)", b, n))
			write(b, n)
		case op < 70: // read a random range
			b := rng.Intn(blocks)
			n := 1 + rng.Intn(min(32, blocks-b))
			got := make([]byte, n*BlockSize)
			if _, err := v.ReadAt(got, int64(b)*BlockSize); err != nil {
				fail("read: %v", err)
			}
			if !bytes.Equal(got, m.data[b*BlockSize:(b+n)*BlockSize]) {
				fail("read [%d,+%d) differs from the model", b, n)
			}
		case op < 78: // drain, sometimes against a store that is down
			if rng.Intn(3) == 0 {
				log = append(log, "drain (store down)")
				store.down.Store(true)
				// (Nothing to drain, if the drain loop just did.)
				if err := v.Drain(ctx); err != nil && !errors.Is(err, errDown) {
					fail("drain with the store down: %v", err)
				}
				// Keep it down a few more steps at times: the next drain
				// seals again on top of a failed one.
				if rng.Intn(2) == 0 {
					store.down.Store(false)
				}
			} else {
				store.down.Store(false)
				log = append(log, "drain")
				if err := v.Drain(ctx); err != nil {
					fail("drain: %v", err)
				}
			}
		case op < 84: // flush, crash, reopen: the WAL is replayed
			store.down.Store(false)
			log = append(log, "flush, crash, reopen")
			if err := v.Flush(); err != nil {
				fail("flush: %v", err)
			}
			v.abandon()
			if v, err = Open(ctx, store, "t", o()); err != nil {
				fail("reopen: %v", err)
			}
		case op < 88: // move to another node
			store.down.Store(false)
			if class == DurabilityStore {
				// Lost with its WAL: the store log carries what it flushed.
				log = append(log, "flush, node lost, open elsewhere")
				if err := v.Flush(); err != nil {
					fail("flush: %v", err)
				}
				v.abandon()
			} else {
				log = append(log, "close, open elsewhere")
				if err := v.Close(); err != nil {
					fail("close: %v", err)
				}
			}
			walDir = fmt.Sprintf("/wal%d", step)
			if v, err = Open(ctx, store, "t", o()); err != nil {
				fail("open elsewhere: %v", err)
			}
		case op < 92: // snapshot by the owner
			store.down.Store(false)
			name := fmt.Sprintf("s%d", step)
			log = append(log, "snapshot "+name)
			if _, err := v.Snapshot(ctx, name); err != nil {
				fail("snapshot: %v", err)
			}
			snaps[name] = &trimModel{data: bytes.Clone(m.data), hole: append([]bool(nil), m.hole...)}
		default:
			log = append(log, "check")
			checkVol("volume", v, m)
		}
	}
	store.down.Store(false)
	checkVol("volume", v, m)
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	walDir = "/final"
	if v, err = Open(ctx, store, "t", o()); err != nil {
		t.Fatal(err)
	}
	checkVol("volume reopened from the store", v, m)
	for name, want := range snaps {
		s, err := OpenSnapshot(ctx, store, "t", name, Options{CacheBlocks: -1, Logger: quietLogger()})
		if err != nil {
			t.Fatal(err)
		}
		checkVol("snapshot "+name, s, want)
		s.Close()
		if err := Clone(ctx, store, "t", name, "c-"+name, 0); err != nil {
			t.Fatal(err)
		}
		c, err := Open(ctx, store, "c-"+name, Options{ReadOnly: true, CacheBlocks: -1, Logger: quietLogger()})
		if err != nil {
			t.Fatal(err)
		}
		checkVol("clone of "+name, c, want)
		c.Close()
	}
}
