package viperblock

import (
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/vfs"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/wal"
)

// slabSize is the arena's allocation unit. A slab holds WAL records back to
// back exactly as they go to the segment file, so one copy of the data
// serves the WAL write, reads of blocks not yet drained, and the drain.
const slabSize = 4 << 20

// slab is one arena slab: records are bump-allocated from buf. Bytes below
// used never change once written (used only grows, under the shard lock).
type slab struct {
	buf    []byte
	used   int
	pooled bool // returned to slabPool when its segment is retired
}

// slabPool keeps retired slabs for reuse, up to a bound. Reusing memory
// that is already mapped matters: a fresh 4 MiB slab costs 1024 page faults,
// which on a virtual machine can cost more than the copies it will hold.
// (A sync.Pool is emptied by every garbage collection, so it is not used.)
var slabPool = struct {
	mu   sync.Mutex // guards free
	free []*slab
	max  int
}{max: 256} // 1 GiB

func getSlab() *slab {
	slabPool.mu.Lock()
	if n := len(slabPool.free); n > 0 {
		s := slabPool.free[n-1]
		slabPool.free = slabPool.free[:n-1]
		slabPool.mu.Unlock()
		s.used = 0
		return s
	}
	slabPool.mu.Unlock()
	return &slab{buf: make([]byte, slabSize), pooled: true}
}

func putSlab(s *slab) {
	if !s.pooled {
		return
	}
	slabPool.mu.Lock()
	if len(slabPool.free) < slabPool.max {
		slabPool.free = append(slabPool.free, s)
	}
	slabPool.mu.Unlock()
}

// entry locates the newest not-yet-drained record of a block.
type entry struct {
	seq uint64
	sl  *slab
	off int // record offset in sl.buf
}

func (e entry) data() []byte {
	return e.sl.buf[e.off+wal.HeaderSize : e.off+wal.BlockRecordLen]
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
	written int64 // record bytes written to the file
	created bool  // the file exists
	removed bool  // the file of a retired segment is deleted
	synced  atomic.Int64
	dead    bool // retired: the file is gone, nothing more to write
}

func (v *Volume) shardDir(i int) string { return filepath.Join(v.wdir, fmt.Sprintf("%02d", i)) }

func (v *Volume) newSegment(i int, gen uint64) *segment {
	return &segment{shard: i, gen: gen, path: filepath.Join(v.shardDir(i), fmt.Sprintf("%016x.wal", gen))}
}

// reserve bump-allocates n bytes in the shard's active segment. sh.mu must
// be held.
func (v *Volume) reserve(sh *shard, n int) (*slab, int) {
	seg := sh.seg
	var sl *slab
	if k := len(seg.slabs); k > 0 {
		sl = seg.slabs[k-1]
	}
	if sl == nil || sl.used+n > len(sl.buf) {
		if sl != nil {
			select { // a slab filled: let the writeback goroutine start on it
			case v.writeback <- seg:
			default:
			}
		}
		sl = getSlab()
		seg.slabs = append(seg.slabs, sl)
	}
	off := sl.used
	sl.used += n
	seg.size += int64(n)
	return sl, off
}

// appendBlock logs one full block write and makes it visible to readers.
func (v *Volume) appendBlock(b uint64, data []byte) {
	sh := &v.shards[b&(nShards-1)]
	sh.mu.Lock()
	seq := v.seq.Add(1)
	sl, off := v.reserve(sh, wal.BlockRecordLen)
	wal.PutBlock(sl.buf[off:off+wal.BlockRecordLen], seq, b, data)
	sh.blocks[b] = entry{seq: seq, sl: sl, off: off}
	sh.mu.Unlock()
	v.pending.Add(wal.BlockRecordLen)
}

// writeOut writes a segment's unwritten records to its file and, if sync,
// fsyncs it. Concurrent callers serialize on seg.io; a caller that finds its
// target already synced returns at once (group commit).
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
	end := seg.size
	var parts [][]byte
	var pos int64
	for _, sl := range seg.slabs {
		next := pos + int64(sl.used)
		if next > seg.written {
			from := max(seg.written-pos, 0)
			parts = append(parts, sl.buf[from:sl.used])
		}
		pos = next
	}
	sh.mu.Unlock()
	if seg.f == nil {
		if err := v.createSegmentFile(sh, seg); err != nil {
			return v.setWALErr(err)
		}
	}
	for _, p := range parts {
		if _, err := seg.f.Write(p); err != nil {
			return v.setWALErr(fmt.Errorf("viperblock: write WAL %s: %w", seg.path, err))
		}
	}
	seg.written = end
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

func (v *Volume) createSegmentFile(sh *shard, seg *segment) error {
	f, err := v.fs.Create(seg.path)
	if err != nil {
		return fmt.Errorf("viperblock: create WAL segment: %w", err)
	}
	hdr := wal.AppendSegmentHeader(nil, wal.SegmentHeader{Shard: uint16(sh.idx), Epoch: v.epoch, Generation: seg.gen, Volume: v.name})
	if _, err := f.Write(hdr); err != nil {
		f.Close()
		return fmt.Errorf("viperblock: write WAL segment header: %w", err)
	}
	if err := v.crashPoint("wal.before-dir-sync"); err != nil {
		f.Close()
		return err
	}
	if err := vfs.SyncDir(v.fs, v.shardDir(sh.idx)); err != nil {
		f.Close()
		return fmt.Errorf("viperblock: sync WAL directory: %w", err)
	}
	seg.f = f
	seg.created = true
	return nil
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
		_ = v.fs.Remove(seg.path)
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
	remove := seg.recovered || seg.written > 0 || seg.created
	seg.io.Unlock()
	if remove {
		// Its records are all committed (replay skips them), so the file
		// can go at leisure: off the drain's path if the writeback
		// goroutine has room.
		select {
		case v.writeback <- seg:
		default:
			_ = v.fs.Remove(seg.path)
		}
	}
	for _, sl := range seg.slabs {
		putSlab(sl)
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
	return v.flush()
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
		return v.walErr()
	case 1:
		return v.writeOut(jobs[0].sh, jobs[0].seg, jobs[0].target, true)
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
	return nil
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

// writebackLoop writes full slabs to their segment files in the background
// so a later Flush has less to write.
func (v *Volume) writebackLoop() {
	defer v.done.Done()
	for {
		select {
		case <-v.stop:
			return
		case seg := <-v.writeback:
			if v.removeRetired(seg) {
				continue
			}
			sh := &v.shards[seg.shard]
			v.prepare(sh, seg)
			sh.mu.Lock()
			target := seg.size
			sh.mu.Unlock()
			_ = v.writeOut(sh, seg, target, false)
		}
	}
}
