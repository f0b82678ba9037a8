package viperblock

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/vfs"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/wal"
)

// maxSlabSize is the arena's largest allocation unit, and minSlabSize its
// smallest. A slab holds WAL records back to back as they go to the segment
// file (an encrypted volume's unsealed, sealed on their way out: see
// putBlockRecord), so one copy of the data serves the WAL write, reads of
// blocks not yet drained, and the drain. A volume's slab size follows its
// pending limit (slabSizeFor): every live segment holds a partly filled
// last slab, and that waste must stay small next to the limit.
const (
	maxSlabSize = 4 << 20
	minSlabSize = 64 << 10
)

// slabSizeFor is the slab size for a pending limit: the largest power of
// two at most maxPending/128, within [minSlabSize, maxSlabSize]. The 16
// active segments and 16 sealed ones of a drain in flight then waste at
// most a quarter of the limit in partly filled slabs.
func slabSizeFor(maxPending int64) int {
	n := maxSlabSize
	for n > minSlabSize && int64(n) > maxPending/128 {
		n >>= 1
	}
	return n
}

// slab is one arena slab: records are bump-allocated from buf. Bytes below
// used never change once written (used only grows, under the shard lock).
type slab struct {
	buf    []byte
	used   int
	pooled bool // returned to the volume's slab pool when its segment is retired
}

// slabPool keeps a volume's retired slabs for reuse, up to a bound.
// Reusing memory that is already mapped matters: a fresh 4 MiB slab costs
// 1024 page faults, which on a virtual machine can cost more than the
// copies it will hold. (A sync.Pool is emptied by every garbage
// collection, so it is not used.) A slab is allocated only when the pool
// is empty, so the volume's slabs, in use and pooled, never exceed the most
// it has had in use at once (see memory.go).
type slabPool struct {
	size int        // bytes per slab; fixed at open
	max  int        // most slabs kept; fixed at open
	mu   sync.Mutex // guards free
	free []*slab
	live atomic.Int64 // bytes of the pooled slabs allocated and not dropped
}

func (p *slabPool) get() *slab {
	p.mu.Lock()
	if n := len(p.free); n > 0 {
		s := p.free[n-1]
		p.free = p.free[:n-1]
		p.mu.Unlock()
		s.used = 0
		return s
	}
	p.mu.Unlock()
	p.live.Add(int64(p.size))
	return &slab{buf: make([]byte, p.size), pooled: true}
}

func (p *slabPool) put(s *slab) {
	if !s.pooled {
		return
	}
	p.mu.Lock()
	keep := len(p.free) < p.max
	if keep {
		p.free = append(p.free, s)
	}
	p.mu.Unlock()
	if !keep {
		p.live.Add(-int64(len(s.buf)))
	}
}

// entry locates the newest not-yet-drained record of a block.
type entry struct {
	seq uint64
	sl  *slab
	off int // record offset in sl.buf
}

// shard is one of the 16 lock domains: the block store for blocks with
// (block & 0xF) == index and that shard's WAL segments.
type shard struct {
	idx    int
	mu     sync.Mutex       // guards blocks, seg, sealed, and appends to seg's slabs
	blocks map[uint64]entry // blocks whose newest record is not yet drained
	seg    *segment         // active segment receiving appends
	sealed []*segment       // sealed segments awaiting drain, oldest first
}

// segment is one WAL segment file and the slabs holding its records.
type segment struct {
	shard     int
	gen       uint64
	path      string
	slabs     []*slab // guarded by shard.mu while the segment is active
	size      int64   // record bytes appended; guarded by shard.mu
	recovered bool    // read back from disk at open

	io      sync.Mutex // serializes file I/O; guards f, written, dead
	f       vfs.File
	written int64        // record bytes written to the file
	wrote   atomic.Int64 // written, for readers without io (the writeback's choice)
	base    int64        // the file's header length: records start here
	created bool         // the file exists
	removed bool         // the file of a retired segment is deleted
	synced  atomic.Int64
	dead    bool // retired: the file is gone, nothing more to write

	uploaded int64 // record bytes in the store log (see storelog.go); guarded by Volume.slog.mu

	salt  uint32 // every record's salt (wal format version 2); fixed at creation
	alloc int64  // the file's size: records may be written below it without growing it; guarded by io
	init  int64  // the file's written length (see freeFile.init); guarded by io
}

func (v *Volume) shardDir(i int) string { return filepath.Join(v.wdir, fmt.Sprintf("%02d", i)) }

func (v *Volume) newSegment(i int, gen uint64) *segment {
	return &segment{shard: i, gen: gen, path: filepath.Join(v.shardDir(i), fmt.Sprintf("%016x.wal", gen)), salt: newSalt()}
}

// newSalt returns a random segment salt (see package wal).
func newSalt() uint32 {
	for {
		if s := rand.Uint32(); wal.ValidSalt(s) {
			return s
		}
	}
}

// WAL segment files are prepared ahead of need and recycled, so that the
// write a Flush syncs lands in space the file already has and has already
// written: an fdatasync then writes the data alone. A write that grows the
// file also commits the filesystem's journal (its size and block map), and
// so does the first write into preallocated (fallocate) space, which the
// filesystem keeps as unwritten extents until their data is on disk and
// converts in the journal at that write's sync.
//
// Free files. The file of a retired segment (all its records committed) is
// renamed <generation>.free and kept, up to walFreePerShard per shard and
// MaxPendingBytes/2 bytes in all, for the next segment of its shard: its
// header is rewritten with a new salt and made durable under its free
// name, and only then renamed to the new segment's name, so the records of
// its previous life read as the end of the log (package wal) and a crash
// never leaves a segment file with a torn header (reuseFile). Free files
// are deleted at Close and at Open.
//
// Preparation. A background goroutine (walPrepLoop) keeps every shard in
// use (with records not yet committed) supplied with a free file whose
// whole length is written: when such a shard has no free file it creates
// prep-<n>.free and writes it with zeros, and a recycled file whose tail
// was only preallocated (or never reached) gets that tail written with
// zeros; either is fdatasync'ed before it goes back to the pool, so the
// segment that takes it appends into written space from its first record
// to its last. The same goroutine keeps written space ahead of the records
// of each shard's active segment (fillActive), for a segment whose file
// did not come prepared (none was ready: the first segments of an open)
// or that outgrows it. Should the records still reach the file's end, the
// write extends it itself (extend), walPreallocMin at first and then by
// its own size (at most walPreallocMax), with fallocate. The cost is
// bounded:
//
//   - space: a prepared file is twice the share of one shard in a drain
//     (walPrepSize: 2*DrainBytes/16, within [walPreallocMin,
//     walPreallocMax]; 8 MiB by default). Prepared files count against the
//     free files' bound (walFreePerShard per shard, MaxPendingBytes/2 in
//     all), and a shard gets a new one only when it has no free file and
//     no sealed segment (whose file comes back to it once drained), so by
//     default at most 16*8 MiB = 128 MiB beyond the recycled files; an
//     active segment's file is written at most half a prepared file's
//     length past its records (64 MiB in all by default);
//   - bandwidth: the zeros are written in walPrepChunk (256 KiB) pieces,
//     each sent to the disk at once (not left for a sync to write in one
//     burst), at no more than walPrepRate (64 MiB/s), with no credit for
//     idle time, so they take a bounded share of the disk from drains and
//     WAL writes; in steady state recycled files, already written, need
//     little or nothing.
const (
	walPreallocMin  = 1 << 20
	walPreallocMax  = 16 << 20
	walFreePerShard = 2
	walFreeSuffix   = ".free"
	walPrepChunk    = 256 << 10
	walPrepRate     = 64 << 20 // bytes per second
)

// walPrepSize is the size of a prepared free file for a drain threshold.
func walPrepSize(drainBytes int64) int64 {
	n := (2*drainBytes/nShards + walPreallocMin - 1) / walPreallocMin * walPreallocMin
	return min(max(n, walPreallocMin), walPreallocMax)
}

// freeFile is a retired segment file kept for reuse.
type freeFile struct {
	path string
	size int64
	// init is how much of the file, from its start, is written (a header,
	// records or zeros) rather than a hole or preallocated: appends below
	// it convert no unwritten extent. Equal to size once prepared.
	init int64
	salt uint32 // the salt of its last life (never reused for the next); 0 for a prepared file
	busy bool   // being prepared: not to be taken
}

// ready reports whether f is written over its whole length.
func (f freeFile) ready() bool { return f.init >= f.size }

// walFree is a volume's pool of free segment files.
type walFree struct {
	mu    sync.Mutex
	files [nShards][]freeFile
	bytes int64
	max   int64 // most bytes kept; fixed at open
	prep  int64 // the size of a prepared file; fixed at open
	names int   // prepared files created (their names)
}

// take removes and returns a free file of shard i whose last salt is not
// salt and that is not being prepared, a fully written one if there is.
func (p *walFree) take(i int, salt uint32) (freeFile, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := p.files[i]
	best := -1
	for k := len(l) - 1; k >= 0; k-- {
		if f := l[k]; f.salt != salt && !f.busy && (best < 0 || f.ready() && !l[best].ready()) {
			best = k
		}
	}
	if best < 0 {
		return freeFile{}, false
	}
	f := l[best]
	p.files[i] = append(l[:best], l[best+1:]...)
	p.bytes -= f.size
	return f, true
}

// claim marks a free file of shard i that is not fully written as being
// prepared and returns it; if create, a shard without free files gets a
// new one, named and reserved, with nothing written (fresh). It reports
// false when there is nothing to prepare or no room.
func (p *walFree) claim(i int, dir string, create bool) (f freeFile, fresh, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, f := range p.files[i] {
		if !f.busy && !f.ready() {
			p.files[i][k].busy = true
			return f, false, true
		}
	}
	if !create || len(p.files[i]) > 0 || p.prep <= 0 || p.bytes+p.prep > p.max {
		return freeFile{}, false, false
	}
	p.names++
	f = freeFile{path: filepath.Join(dir, fmt.Sprintf("prep-%d%s", p.names, walFreeSuffix)), size: p.prep, busy: true}
	p.files[i] = append(p.files[i], f)
	p.bytes += f.size
	return f, true, true
}

// prepared ends the preparation of shard i's free file at path: it is
// written up to init, or, if !ok, gone from the pool (and the disk).
func (p *walFree) prepared(i int, path string, init int64, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, f := range p.files[i] {
		if f.path == path {
			if ok {
				p.files[i][k].busy = false
				p.files[i][k].init = init
			} else {
				p.files[i] = append(p.files[i][:k], p.files[i][k+1:]...)
				p.bytes -= f.size
			}
			return
		}
	}
}

// room reserves room for a file of size bytes in shard i's pool.
func (p *walFree) room(i int, size int64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.files[i]) >= walFreePerShard || p.bytes+size > p.max {
		return false
	}
	p.bytes += size
	return true
}

func (p *walFree) put(i int, f freeFile) {
	p.mu.Lock()
	p.files[i] = append(p.files[i], f)
	p.mu.Unlock()
}

func (p *walFree) unreserve(size int64) {
	p.mu.Lock()
	p.bytes -= size
	p.mu.Unlock()
}

// drop empties the pool and returns the files it held.
func (p *walFree) drop() []freeFile {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []freeFile
	for i := range p.files {
		out = append(out, p.files[i]...)
		p.files[i] = nil
	}
	p.bytes = 0
	return out
}

// recycle puts the file of a retired segment in the free pool, or deletes
// it when the pool is full. seg.io must be held.
func (v *Volume) recycle(seg *segment) {
	if seg.path == "" { // held in memory only (an adopted store log)
		return
	}
	size := seg.alloc
	if size > 0 && v.wfree.room(seg.shard, size) {
		free := strings.TrimSuffix(seg.path, ".wal") + walFreeSuffix
		// No directory sync: should the rename be lost, the file is
		// replayed under its old name, and its records, all committed,
		// are skipped.
		if err := v.fs.Rename(seg.path, free); err == nil {
			init := min(max(seg.init, seg.base+seg.written), size)
			v.wfree.put(seg.shard, freeFile{path: free, size: size, init: init, salt: seg.salt})
			if init < size {
				v.kickPrep()
			}
			return
		}
		v.wfree.unreserve(size)
	}
	_ = v.fs.Remove(seg.path)
}

// removeFree deletes the pool's files and any free file left in the shard
// directories.
func (v *Volume) removeFree() {
	for _, f := range v.wfree.drop() {
		_ = v.fs.Remove(f.path)
	}
}

// extend grows seg's file ahead of a write that ends at need bytes (best
// effort: a file that cannot be preallocated grows with its writes).
// seg.io must be held.
func (v *Volume) extend(seg *segment, need int64) {
	step := min(max(seg.alloc, walPreallocMin), walPreallocMax)
	size := (need + step - 1) / step * step
	if err := vfs.Preallocate(seg.f, size); err != nil {
		v.log.Debug("could not preallocate a WAL segment", "file", seg.path, "err", err)
		seg.alloc = need
		return
	}
	seg.alloc = size
}

// Deferred WAL writes.
//
// A write is acknowledged once its record is in a slab; the WAL write of
// the record waits until something needs it:
//
//   - a Flush (or a FUA write, which the server turns into a write and a
//     Flush) writes and syncs every record not yet synced, of the active
//     segments and of the sealed ones, a drain in flight or not: it
//     returns only once everything it covers is in the WAL, synced, or in
//     a committed manifest (a segment retired meanwhile: see writeOut).
//     Waiting for a drain's commit instead would tie the Flush's latency
//     to the store's; the write is bounded by Options.WALDeferBytes;
//   - the writeback goroutine writes ahead whatever exceeds
//     Options.WALDeferBytes, newest segments first (writeAhead), so that a
//     Flush finds at most about that much to write. Newest first: the
//     sealed segments a drain is taking are the records most likely to be
//     committed before anything asks for them, so they are left unwritten
//     longest. (Oldest first, a writer faster than the drains, which keeps
//     the pending data above the bound, would have nearly every record
//     written ahead, the drain's included.)
//   - a drain that commits a sealed segment retires it: records of it not
//     yet written are then never written (retire counts them as skipped).
//
// Replay is unchanged: a segment file holds a prefix of its segment's
// records (possibly none), and whatever a commit holds is skipped anyway.
// Unflushed writes may be lost in a crash, in any order: a newer segment
// may reach its file before an older one of the same shard does, which the
// durability contract allows (only what a Flush returned for must
// survive). Volume.unwritten counts the record bytes of live segments not
// yet written; a negative WALDeferBytes defers nothing (each filled slab is
// written at once).

// reserve bump-allocates n bytes in the shard's active segment. sh.mu must
// be held.
func (v *Volume) reserve(sh *shard, n int) (*slab, int) {
	seg := sh.seg
	var sl *slab
	if k := len(seg.slabs); k > 0 {
		sl = seg.slabs[k-1]
	}
	if sl == nil || sl.used+n > len(sl.buf) {
		if sl != nil && v.opts.WALDeferBytes < 0 {
			select { // a slab filled: let the writeback goroutine start on it
			case v.writeback <- seg:
			default:
			}
		}
		sl = v.slabs.get()
		seg.slabs = append(seg.slabs, sl)
	}
	off := sl.used
	sl.used += n
	seg.size += int64(n)
	u := v.unwritten.Add(int64(n))
	if b := v.opts.WALDeferBytes; b >= 0 && u > b && u-int64(n) <= b {
		select { // over the bound: let the writeback goroutine write ahead
		case v.writeback <- seg:
		default:
		}
	}
	return sl, off
}

// appendBlock logs one full block write and makes it visible to readers.
func (v *Volume) appendBlock(b uint64, data []byte) {
	sh := &v.shards[b&(nShards-1)]
	sh.mu.Lock()
	seq := v.seq.Add(1)
	n := v.blockRecLen()
	sl, off := v.reserve(sh, n)
	v.putBlockRecord(sl.buf[off:off+n], sh.seg.salt, seq, b, data)
	sh.blocks[b] = entry{seq: seq, sl: sl, off: off}
	sh.mu.Unlock()
	v.pending.Add(int64(n))
}

// writeOut writes a segment's unwritten records, at least up to target
// (to the end of the slab that holds it), to its file and, if sync, fsyncs
// it. Concurrent callers serialize on seg.io; a caller that finds its
// target already synced returns at once (group commit). A retired segment
// (dead) is committed: there is nothing to write.
func (v *Volume) writeOut(sh *shard, seg *segment, target int64, sync bool) error {
	seg.io.Lock()
	defer seg.io.Unlock()
	if seg.dead || (sync && seg.synced.Load() >= target) || (!sync && seg.written >= target) {
		return nil
	}
	if err := v.walErr(); err != nil {
		return err
	}
	sh.mu.Lock()
	var parts [][]byte
	var pos int64
	for _, sl := range seg.slabs {
		if pos >= target {
			break
		}
		next := pos + int64(sl.used)
		if next > seg.written {
			from := max(seg.written-pos, 0)
			parts = append(parts, sl.buf[from:sl.used])
		}
		pos = next
	}
	end := max(pos, seg.written)
	sh.mu.Unlock()
	if seg.f == nil {
		if err := v.createSegmentFile(sh, seg); err != nil {
			if retryableWALErr(err) {
				return v.setWALWriteErr(err)
			}
			return v.setWALErr(err)
		}
	}
	if need := seg.base + end; need > seg.alloc {
		v.extend(seg, need)
	}
	if seg.init-(seg.base+end) < v.wfree.prep/4 {
		v.kickPrep() // fillActive: keep written space ahead of the records
	}
	if err := v.writeRecords(seg.f, parts); err != nil {
		return v.failedWrite(seg, fmt.Errorf("viperblock: write WAL %s: %w", seg.path, err))
	}
	if n := end - seg.written; n > 0 {
		v.unwritten.Add(-n)
		v.stats.walWritten.Add(uint64(n))
	}
	seg.written = end
	seg.wrote.Store(end)
	if sync {
		if err := v.crashPoint("wal.before-fsync"); err != nil {
			return err
		}
		if err := vfs.DataSync(seg.f); err != nil {
			// After a failed fsync the page cache may have dropped the
			// data: never retry as if nothing happened.
			return v.setWALErr(fmt.Errorf("viperblock: fsync WAL %s: %w", seg.path, err))
		}
		v.stats.fsyncs.Add(1)
		seg.synced.Store(end)
	}
	return nil
}

// failedWrite handles a failed write of records to seg's file. The write
// may have stored part of what it was given, leaving a torn record after
// the last good one; the next write would then follow it, and a replay
// would find a valid record after garbage, which is corruption. So the
// file is truncated back to the last good record and the write offset put
// there: the file is then exactly as before the write, and for a passing
// condition (the disk full, a quota) the write may be retried
// (setWALWriteErr). Any other error, or a file that cannot be put back,
// fails the WAL for good (setWALErr). seg.io must be held.
func (v *Volume) failedWrite(seg *segment, err error) error {
	if !retryableWALErr(err) {
		return v.setWALErr(err)
	}
	good := seg.base + seg.written
	seg.alloc = good
	seg.init = min(seg.init, good)
	if terr := seg.f.Truncate(good); terr != nil {
		return v.setWALErr(fmt.Errorf("%w; truncating back to the last good record failed: %v", err, terr))
	}
	if _, serr := seg.f.Seek(good, io.SeekStart); serr != nil {
		return v.setWALErr(fmt.Errorf("%w; seeking back to the last good record failed: %v", err, serr))
	}
	return v.setWALWriteErr(err)
}

func (v *Volume) createSegmentFile(sh *shard, seg *segment) error {
	hdr := wal.AppendSegmentHeader(nil, wal.SegmentHeader{Shard: uint16(sh.idx), Epoch: v.epoch, Generation: seg.gen, Salt: seg.salt, Created: uint32(time.Now().Unix()), Volume: v.name})
	f, ff, err := v.reuseFile(sh.idx, seg, hdr)
	if err != nil {
		return err
	}
	size, init := ff.size, ff.init
	if f == nil {
		if f, err = v.fs.Create(seg.path); err != nil {
			return fmt.Errorf("viperblock: create WAL segment: %w", err)
		}
		if _, err := f.Write(hdr); err != nil {
			// Nothing in it yet: drop the file (a torn header left by a
			// crash is discarded at replay); a retry creates it afresh.
			f.Close()
			_ = v.fs.Remove(seg.path)
			return fmt.Errorf("viperblock: write WAL segment header: %w", err)
		}
	}
	if err := v.crashPoint("wal.before-dir-sync"); err != nil {
		f.Close()
		return err
	}
	if err := vfs.SyncDir(v.fs, v.shardDir(sh.idx)); err != nil {
		f.Close()
		return fmt.Errorf("%w: viperblock: sync WAL directory: %w", errWALSync, err)
	}
	seg.f = f
	seg.base = int64(len(hdr))
	seg.alloc = max(size, seg.base)
	seg.init = max(init, seg.base)
	seg.created = true
	return nil
}

// reuseFile turns a free file of shard i into seg's file, with hdr written
// at its start and durable, or returns a nil file when none is free, and
// the free file it was: its size is what records can fill without growing
// it, its init what they can fill without converting unwritten extents.
//
// The header is rewritten while the file still has its free name, and that
// name is made durable first: a crash at any step then leaves either a free
// file (deleted at open) or a segment file whose new header is whole and
// durable, never a segment file with a torn header, which would read as
// corruption. Only the crash points' errors are returned; a file that
// fails any step is deleted and the next one tried.
func (v *Volume) reuseFile(i int, seg *segment, hdr []byte) (vfs.File, freeFile, error) {
	synced := false
	for {
		ff, ok := v.wfree.take(i, seg.salt)
		if !ok {
			return nil, freeFile{}, nil
		}
		v.kickPrep() // the shard may need another
		if !synced {
			// The rename that retired the file was not synced.
			if err := vfs.SyncDir(v.fs, v.shardDir(i)); err != nil {
				_ = v.fs.Remove(ff.path)
				continue
			}
			synced = true
		}
		f, err := v.fs.OpenReadWrite(ff.path)
		if err != nil {
			_ = v.fs.Remove(ff.path)
			continue
		}
		// Records do not fill whole pages, so each append also writes
		// part of the next page, which is read first unless cached (a
		// page of unwritten extents reads as zeros without a read): have
		// the file cached before the records come, off the Flush path.
		vfs.WillNeed(f)
		if _, err := f.Write(hdr); err != nil {
			f.Close()
			_ = v.fs.Remove(ff.path)
			continue
		}
		if err := v.crashPoint("wal.before-recycle-sync"); err != nil {
			f.Close()
			return nil, freeFile{}, err
		}
		if err := vfs.DataSync(f); err != nil {
			f.Close()
			_ = v.fs.Remove(ff.path)
			continue
		}
		if err := v.crashPoint("wal.before-recycle-rename"); err != nil {
			f.Close()
			return nil, freeFile{}, err
		}
		if err := v.fs.Rename(ff.path, seg.path); err != nil {
			f.Close()
			_ = v.fs.Remove(ff.path)
			continue
		}
		v.stats.walRecycled.Add(1)
		return f, ff, nil
	}
}

// removeRetired deletes the file of a retired segment and reports whether
// seg was retired.
func (v *Volume) removeRetired(seg *segment) bool {
	seg.io.Lock()
	defer seg.io.Unlock()
	if !seg.dead {
		return false
	}
	if !seg.removed {
		seg.removed = true
		v.recycle(seg)
	}
	return true
}

// prepare creates a segment's file ahead of its first write.
func (v *Volume) prepare(sh *shard, seg *segment) {
	seg.io.Lock()
	defer seg.io.Unlock()
	if seg.f == nil && !seg.dead && v.walErr() == nil {
		if err := v.createSegmentFile(sh, seg); err != nil {
			v.log.Warn("could not create the next WAL segment ahead of time", "err", err)
		}
	}
}

// retire removes a drained segment's file and returns its slabs.
func (v *Volume) retire(seg *segment) {
	seg.io.Lock()
	seg.dead = true
	if seg.f != nil {
		seg.f.Close()
		seg.f = nil
	}
	if n := seg.size - seg.written; n > 0 {
		// Committed before anything asked for them to be durable: never
		// written.
		v.unwritten.Add(-n)
		v.stats.walSkipped.Add(uint64(n))
	}
	remove := seg.recovered || seg.written > 0 || seg.created
	seg.io.Unlock()
	if remove {
		// Its records are all committed (replay skips them), so the file
		// can be recycled or go at leisure: off the drain's path if the
		// writeback goroutine has room.
		select {
		case v.writeback <- seg:
		default:
			v.removeRetired(seg)
		}
	}
	for _, sl := range seg.slabs {
		v.slabs.put(sl)
	}
	seg.slabs = nil
}

type flushJob struct {
	sh     *shard
	seg    *segment
	target int64
}

// Flush makes every write that completed before it durable in the WAL.
func (v *Volume) Flush() error {
	if v.opts.ReadOnly {
		return nil
	}
	v.ops.RLock()
	defer v.ops.RUnlock()
	if err := v.checkWritable(); err != nil {
		return err
	}
	v.stats.flushes.Add(1)
	defer v.stats.m.flush.Since(time.Now())
	if !v.slog.on {
		if err := v.flush(); err != nil {
			return err
		}
		return v.confirm()
	}
	// DurabilityStore: the local WAL and the store log at once.
	up := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), v.opts.LeaseDuration)
		defer cancel()
		up <- v.uploadTail(ctx)
	}()
	err := v.flush()
	if uerr := <-up; err == nil {
		err = uerr
	}
	if err != nil {
		return err
	}
	return v.confirm()
}

// confirm returns nil if this open may act as the owner now (confirm a
// flush, or upload to the store): its lease is valid by its own clock (see
// lease.go), or a renewal made now succeeds. An owner whose lease ran out
// (partitioned from the store, or paused) thus learns of a takeover from
// that renewal, which fences it, before it uploads anything.
func (v *Volume) confirm() error {
	if !leaseChecks || v.leaseValid() {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), max(v.opts.LeaseDuration/4, 100*time.Millisecond))
	err := v.renewLease(ctx)
	cancel()
	if v.leaseValid() {
		return nil
	}
	if errors.Is(err, ErrFenced) {
		return err
	}
	if err == nil {
		err = errors.New("the renewal applied too late")
	}
	return fmt.Errorf("%w (%s: %v)", ErrLeaseExpired, v.name, err)
}

func (v *Volume) flush() error {
	var jobs []flushJob
	for i := range v.shards {
		sh := &v.shards[i]
		sh.mu.Lock()
		for _, seg := range sh.sealed {
			if seg.size > seg.synced.Load() {
				jobs = append(jobs, flushJob{sh, seg, seg.size})
			}
		}
		if seg := sh.seg; seg.size > seg.synced.Load() {
			jobs = append(jobs, flushJob{sh, seg, seg.size})
		}
		sh.mu.Unlock()
	}
	switch len(jobs) {
	case 0:
		if err := v.walErr(); err != nil {
			return err
		}
		v.walWriteFail.Store(nil) // nothing left unwritten
		return nil
	case 1:
		err := v.writeOut(jobs[0].sh, jobs[0].seg, jobs[0].target, true)
		if err == nil {
			v.clearWALWriteErr()
		}
		return err
	}
	errs := make([]error, len(jobs))
	var wg sync.WaitGroup
	for i, j := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = v.writeOut(j.sh, j.seg, j.target, true)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	v.clearWALWriteErr()
	return nil
}

// WAL failures come in two kinds.
//
// A failed fsync (of a segment or of a directory) is sticky (walFail): the
// page cache may have dropped what it was asked to make durable, so nothing
// written since the last good fsync can be trusted to be on disk, and the
// volume accepts no more writes (reads keep working; Close does not drain,
// as the flushed state is unknown). So is any other unexpected error.
//
// A write that failed for want of space (ENOSPC, EDQUOT) and left the file
// as it was (failedWrite) is not (walWriteFail): the records stay in memory
// and unwritten, the Flush (or write) that hit it fails with the errno, and
// every later write first retries the WAL (a flush) and fails the same way
// until the space is back. Drains go on meanwhile (they read the records
// from memory, and their commits free WAL segments), and Close still
// drains everything to the backend.
var errWALSync = errors.New("viperblock: WAL sync failed")

// retryableWALErr reports whether a failed WAL write may be retried once
// the file is back to its last good record: the disk or a quota was full.
func retryableWALErr(err error) bool {
	return !errors.Is(err, errWALSync) && (errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT))
}

func (v *Volume) walErr() error {
	if e := v.walFail.Load(); e != nil {
		return *e
	}
	return nil
}

func (v *Volume) setWALErr(err error) error {
	v.walFail.CompareAndSwap(nil, &err)
	v.log.Error("WAL failed; the volume accepts no more writes", "err", err)
	return err
}

// setWALWriteErr records a retryable WAL write failure (see errWALSync).
func (v *Volume) setWALWriteErr(err error) error {
	if v.walWriteFail.Swap(&err) == nil {
		v.log.Error("WAL write failed: out of space; writes and flushes fail until there is room again", "err", err)
	}
	return err
}

// clearWALWriteErr forgets a retryable WAL write failure once a flush has
// written and synced everything.
func (v *Volume) clearWALWriteErr() {
	if v.walWriteFail.Swap(nil) != nil {
		v.log.Info("WAL writable again: writes and flushes succeed")
	}
}

// retryWAL is what a write does while a WAL write failure is outstanding:
// it retries the WAL (a flush) and fails as that does.
func (v *Volume) retryWAL() error {
	if v.walWriteFail.Load() == nil {
		return nil
	}
	return v.flush()
}

// writebackLoop works in the background so that a later Flush has less to
// do: it creates segment files ahead of their first write, deletes or
// recycles the files of retired segments, and writes records ahead: what
// exceeds Options.WALDeferBytes (writeAhead), or with a negative bound
// each segment whose slab filled.
func (v *Volume) writebackLoop() {
	defer v.done.Done()
	for {
		select {
		case <-v.stop:
			return
		case seg := <-v.writeback:
			v.writebackOne(seg)
		case c := <-v.wbsettle:
			for more := true; more; {
				select {
				case seg := <-v.writeback:
					v.writebackOne(seg)
				default:
					more = false
				}
			}
			close(c)
		}
	}
}

// writebackOne does writebackLoop's work for one segment sent to it.
func (v *Volume) writebackOne(seg *segment) {
	if !v.removeRetired(seg) {
		sh := &v.shards[seg.shard]
		v.prepare(sh, seg)
		if v.opts.WALDeferBytes < 0 {
			sh.mu.Lock()
			target := seg.size
			sh.mu.Unlock()
			_ = v.writeOut(sh, seg, target, false)
		}
	}
	if v.opts.WALDeferBytes >= 0 {
		v.writeAhead()
	}
}

// settleWriteback waits until writebackLoop has done the work for every
// segment sent to it before the call, or until the volume stops or ctx
// ends. Tests use it to reach the loop's crash points deterministically.
func (v *Volume) settleWriteback(ctx context.Context) {
	settle(ctx, v.wbsettle, v.stop)
}

// writeAhead writes records of the newest segments with unwritten records
// until no more than Options.WALDeferBytes, less some slack (up to a slab,
// so that it runs about once a slab rather than once a write), are left
// unwritten. It stops at the first failure: the next Flush reports it.
func (v *Volume) writeAhead() {
	bound := v.opts.WALDeferBytes
	goal := bound - min(int64(v.slabs.size), bound/2)
	if v.unwritten.Load() <= bound {
		return
	}
	for range 8 * nShards { // a bound on the passes; each one writes or finds a retired segment
		excess := v.unwritten.Load() - goal
		if excess <= 0 {
			return
		}
		sh, seg := v.newestUnwritten()
		if seg == nil {
			return
		}
		if err := v.crashPoint("wal.before-write-ahead"); err != nil {
			return
		}
		if err := v.writeOut(sh, seg, seg.wrote.Load()+excess, false); err != nil {
			return
		}
	}
}

// newestUnwritten returns the segment of the highest generation that holds
// records not yet written (the one with the most of them among those), and
// its shard.
func (v *Volume) newestUnwritten() (*shard, *segment) {
	var best *segment
	var bsh *shard
	var most int64
	for i := range v.shards {
		sh := &v.shards[i]
		sh.mu.Lock()
		seg := sh.seg
		for k := len(sh.sealed) - 1; seg.size <= seg.wrote.Load() && k >= 0; k-- {
			seg = sh.sealed[k] // the shard's newer sealed segments come last
		}
		if n := seg.size - seg.wrote.Load(); n > 0 && (best == nil || seg.gen > best.gen || seg.gen == best.gen && n > most) {
			best, bsh, most = seg, sh, n
		}
		sh.mu.Unlock()
	}
	return bsh, best
}

// kickPrep wakes the goroutine that prepares free segment files.
func (v *Volume) kickPrep() {
	select {
	case v.wprep <- struct{}{}:
	default:
	}
}

// walPrepLoop prepares free segment files (see walPrepSize) and writes
// ahead in active ones (fillActive): whenever kicked, it works until
// nothing is left to do, active segments first, as their appends are due
// soonest, and going back to them after each free file.
func (v *Volume) walPrepLoop() {
	defer v.done.Done()
	zeros := make([]byte, walPrepChunk)
	p := pacer{rate: walPrepRate}
	var settled []chan struct{} // settleWALPrep callers waiting for this pass
	for {
		for more := true; more; {
			for i := range nShards {
				if err := v.fillActive(i, zeros, &p); err != nil {
					if errors.Is(err, errStopping) {
						return
					}
					v.log.Debug("could not write ahead in a WAL segment file", "shard", i, "err", err)
				}
			}
			var err error
			if more, err = v.prepOne(zeros, &p); errors.Is(err, errStopping) {
				return
			}
		}
		for _, c := range settled {
			close(c)
		}
		settled = nil
		select {
		case <-v.stop:
			return
		case <-v.wprep:
		case c := <-v.wsettle:
			settled = append(settled, c)
		}
	}
}

// settleWALPrep waits until walPrepLoop has done all the work there was
// when it was called (a whole pass that starts after the call), or until
// the volume stops or ctx ends. Tests use it to reach the loop's crash
// points deterministically.
func (v *Volume) settleWALPrep(ctx context.Context) {
	settle(ctx, v.wsettle, v.stop)
}

// settle sends a request to a background loop and waits for the loop to
// close it, for stop to close or for ctx to end.
func settle(ctx context.Context, req chan<- chan struct{}, stop <-chan struct{}) {
	c := make(chan struct{})
	select {
	case req <- c:
	case <-stop:
		return
	case <-ctx.Done():
		return
	}
	select {
	case <-c:
	case <-stop:
	case <-ctx.Done():
	}
}

// prepOne prepares one free file, if any shard needs one, and reports
// whether it did.
func (v *Volume) prepOne(zeros []byte, p *pacer) (bool, error) {
	for i := range nShards {
		// A new file only for a shard in use (an idle volume costs no
		// space) and with no sealed segment, whose file comes back to the
		// pool once a drain commits it, before the shard's next segment
		// is due (at the next drain).
		sh := &v.shards[i]
		sh.mu.Lock()
		used := sh.seg.size > 0 && len(sh.sealed) == 0
		sh.mu.Unlock()
		ff, fresh, ok := v.wfree.claim(i, v.shardDir(i), used)
		if !ok {
			continue
		}
		if err := v.prepFile(i, ff, fresh, zeros, p); err != nil {
			v.wfree.prepared(i, ff.path, 0, false)
			_ = v.fs.Remove(ff.path)
			if !errors.Is(err, errStopping) {
				v.log.Debug("could not prepare a free WAL segment file", "file", ff.path, "err", err)
			}
			return false, err // the next kick tries again
		}
		v.wfree.prepared(i, ff.path, ff.size, true)
		return true, nil
	}
	return false, nil
}

var errStopping = errors.New("viperblock: stopping")

// fillActive keeps written space ahead of the records of shard i's active
// segment, so that its appends never reach space that is preallocated
// (unwritten extents) or past the file's end: a segment whose file did not
// come prepared (no free file was ready) or that outgrows it. When less
// than a quarter of a prepared file's length is written ahead of the next
// record, it writes zeros from there up to half that length ahead, and
// fdatasyncs them piece by piece.
//
// The zeros are written under seg.io, in walPrepChunk pieces, and only at
// or past the end of what the segment has written to its file, so no
// record is ever overwritten: records appended later overwrite zeros, as
// in a prepared file. Zeros after the last record read as the end of the
// log (package wal), synced or not. The file is written through a handle
// of its own (the segment's keeps its offset), opened under seg.io while
// the segment is live; its fdatasync, outside seg.io so Flushes need not
// wait, only makes durable what is already written, so it is harmless
// even once the segment is retired and its file reused.
func (v *Volume) fillActive(i int, zeros []byte, p *pacer) error {
	sh := &v.shards[i]
	sh.mu.Lock()
	seg := sh.seg
	sh.mu.Unlock()
	prep := v.wfree.prep
	var h vfs.File
	var to int64
	// next returns where the next piece goes and its length (0: done);
	// seg.io must be held.
	next := func() (int64, int64) {
		if seg.f == nil || seg.dead || seg.path == "" || v.walErr() != nil {
			return 0, 0
		}
		from := max(seg.init, seg.base+seg.written)
		return from, min(int64(len(zeros)), max(to-from, 0))
	}
	seg.io.Lock()
	if seg.f == nil || seg.dead || seg.path == "" || prep <= 0 || seg.init-(seg.base+seg.written) >= prep/4 {
		seg.io.Unlock()
		return nil
	}
	to = seg.base + seg.written + prep/2
	h, err := v.fs.OpenReadWrite(seg.path) // the path is the segment's while seg.io is held
	seg.io.Unlock()
	if err != nil {
		return err
	}
	defer h.Close()
	for {
		seg.io.Lock()
		_, n := next()
		seg.io.Unlock()
		if n == 0 {
			break
		}
		if !p.wait(n, v.stop) { // not under seg.io: Flushes need it
			return errStopping
		}
		seg.io.Lock()
		from, n := next()
		if n == 0 {
			seg.io.Unlock()
			break
		}
		if _, err := h.Seek(from, io.SeekStart); err != nil {
			seg.io.Unlock()
			return err
		}
		if _, err := h.Write(zeros[:n]); err != nil {
			seg.io.Unlock()
			return err
		}
		seg.init = from + n
		seg.alloc = max(seg.alloc, seg.init)
		seg.io.Unlock()
		// Synced a piece at a time: what the zeros change in the file's
		// metadata (its size, extents converted from unwritten) is
		// committed here, not by a Flush's fdatasync of the segment.
		if err := v.crashPoint("wal.before-fill-sync"); err != nil {
			return err
		}
		if err := vfs.DataSync(h); err != nil {
			return err
		}
	}
	return nil
}

// prepFile writes zeros over a free file's tail, from its init to its size
// (a fresh file is created first), and fdatasyncs it. The file has its
// free name, durable, throughout, so a crash at any point leaves a free
// file, which the next open deletes: a recycled file's free name is made
// durable before anything is written (recycle does not sync the rename,
// and until then the file may come back under its segment name, whose
// header and records must then be intact). A fresh file's name need not
// be durable: reuseFile syncs the directory before it uses a free file.
func (v *Volume) prepFile(i int, ff freeFile, fresh bool, zeros []byte, p *pacer) error {
	var f vfs.File
	var err error
	if fresh {
		f, err = v.fs.Create(ff.path)
	} else {
		if err := vfs.SyncDir(v.fs, v.shardDir(i)); err != nil {
			return err
		}
		f, err = v.fs.OpenReadWrite(ff.path)
	}
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Seek(ff.init, io.SeekStart); err != nil {
		return err
	}
	for off := ff.init; off < ff.size; {
		n := min(int64(len(zeros)), ff.size-off)
		if !p.wait(n, v.stop) {
			return errStopping
		}
		if _, err := f.Write(zeros[:n]); err != nil {
			return err
		}
		vfs.StartWriteback(f) // a piece at a time, not all at the sync
		off += n
	}
	if err := v.crashPoint("wal.before-prep-sync"); err != nil {
		return err
	}
	return vfs.DataSync(f)
}

// pacer spaces writes so that they proceed at no more than rate bytes a
// second; time spent idle earns no credit for a later burst.
type pacer struct {
	rate float64
	next time.Time // when the next write may start
}

// wait sleeps until a write of n bytes may start and counts it; it reports
// false if stop closed meanwhile.
func (p *pacer) wait(n int64, stop <-chan struct{}) bool {
	now := time.Now()
	if p.next.Before(now) {
		p.next = now
	}
	d := p.next.Sub(now)
	p.next = p.next.Add(time.Duration(float64(n) / p.rate * float64(time.Second)))
	if d <= 0 {
		select {
		case <-stop:
			return false
		default:
			return true
		}
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-stop:
		return false
	case <-t.C:
		return true
	}
}
