package viperblock

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/blockmap"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/cache"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/chunk"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/manifest"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/vfs"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/wal"
)

// Open opens a volume. A writable open (the default) takes ownership of the
// volume by bumping its epoch in the backend, and replays the WAL this node
// left if no other owner has committed since.
func Open(ctx context.Context, store backend.Store, name string, opts Options) (*Volume, error) {
	opts.setDefaults(store)
	m, ver, err := readLiveManifest(ctx, store, name)
	if err != nil {
		return nil, err
	}
	// The key first: a missing or wrong one fails here, before the lease
	// or the epoch change anything.
	kr, err := unlock(ctx, m, opts.Keys)
	if err != nil {
		return nil, err
	}
	v := newVolume(store, name, m, ver, opts)
	v.keys = kr
	if opts.ReadOnly {
		return v, nil
	}
	if opts.WALDir == "" {
		return nil, ErrNeedsWALDir
	}
	if opts.LeaseDuration < MinLeaseDuration || opts.LeaseDuration > time.Hour {
		return nil, fmt.Errorf("%w: lease duration %s: must be between %s and 1h", ErrInvalidArg, opts.LeaseDuration, MinLeaseDuration)
	}
	v.wdir = filepath.Join(opts.WALDir, name)
	if err := v.openWAL(ctx); err != nil {
		// Let the next open anywhere take the lease at once.
		v.giveUpLease(context.WithoutCancel(ctx))
		if v.lock != nil {
			v.lock.Close()
		}
		return nil, err
	}
	if !opts.DeferBackground {
		v.Start()
	}
	return v, nil
}

// Start starts a writable volume's background work: the WAL writeback and
// the drain loop (which also answers owner requests). Open calls it unless
// Options.DeferBackground is set. It is idempotent, a no-op for read-only
// volumes, and a no-op once Close has begun.
func (v *Volume) Start() {
	v.started.Do(func() {
		if v.opts.ReadOnly {
			return
		}
		v.startReadCache()
		v.done.Add(4)
		go v.drainLoop()
		go v.writebackLoop()
		go v.compactLoop()
		go v.walPrepLoop()
		v.kickPrep()
		v.startLease()
		if v.pending.Load() > 0 {
			v.kickDrain()
		}
	})
}

// OpenSnapshot opens a snapshot read-only.
func OpenSnapshot(ctx context.Context, store backend.Store, vol, snap string, opts Options) (*Volume, error) {
	opts.setDefaults(store)
	opts.ReadOnly = true
	m, ver, err := readSnapshot(ctx, store, vol, snap)
	if err != nil {
		return nil, err
	}
	kr, err := unlock(ctx, m, opts.Keys)
	if err != nil {
		return nil, err
	}
	v := newVolume(store, vol, m, ver, opts)
	v.keys = kr
	return v, nil
}

// newVolume builds the in-memory volume for manifest m (without a WAL).
func newVolume(store backend.Store, name string, m *manifest.Manifest, ver backend.Version, opts Options) *Volume {
	v := &Volume{
		name: name, store: store, opts: opts, log: opts.Logger.With("volume", name), fs: opts.FS,
		man: m, manVer: ver, epoch: m.Epoch, owner: m.Owner, refs: append([]string{name}, m.Refs...),
		kick: make(chan struct{}, 1), wprep: make(chan struct{}, 1), wsettle: make(chan chan struct{}), wbsettle: make(chan chan struct{}), builders: make(chan *chunk.Builder, opts.UploadConcurrency), writeback: make(chan *segment, 64), stop: make(chan struct{}),
	}
	v.waitCond = sync.NewCond(&v.waitMu)
	v.wfree.max = opts.MaxPendingBytes / 2
	v.wfree.prep = walPrepSize(opts.DrainBytes)
	v.committedHW.Store(m.SeqHW)
	v.idx.max = opts.chunkIndexes()
	v.cache = cache.New(opts.CacheBlocks)
	v.slabs = slabPool{size: slabSizeFor(opts.MaxPendingBytes), max: max(int(opts.SlabPoolBytes/int64(slabSizeFor(opts.MaxPendingBytes))), 0)}
	v.size.Store(m.Size)
	v.seq.Store(m.SeqHW)
	v.bmap.Store(blockmap.New(m.Extents))
	v.compression = m.Compression
	v.setChunkSizes(m)
	v.initCompactor()
	for i := range v.shards {
		v.shards[i] = shard{idx: i, blocks: map[uint64]entry{}}
	}
	return v
}

func (v *Volume) openWAL(ctx context.Context) error {
	if v.opts.ResumeOnly {
		// Nothing to resume without a WAL directory: refuse before
		// creating one.
		if _, err := v.fs.Stat(v.wdir); errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%w: %s: no WAL directory at %s", ErrNotOwner, v.name, v.wdir)
		} else if err != nil {
			return err
		}
	}
	if err := vfs.MkdirAllDurable(v.fs, v.wdir); err != nil {
		return fmt.Errorf("viperblock: WAL directory: %w", err)
	}
	lock, err := v.fs.TryLock(filepath.Join(v.wdir, ".lock"))
	if err != nil {
		if errors.Is(err, vfs.ErrLocked) {
			return fmt.Errorf("%w: %s is open in another process on this node (WAL %s)", ErrInUse, v.name, v.wdir)
		}
		return err
	}
	v.lock = lock
	own, found, err := readOwner(v.fs, v.wdir)
	if err != nil {
		return err
	}
	if v.opts.ResumeOnly && !own.owns(v.man.Epoch, v.man.Owner) {
		return v.notOwner(own, found)
	}
	// Take the ownership lease (waiting for the holder to release it or
	// for it to expire), then read the manifest again: what it holds now
	// is the state to take over.
	nonce, err := newNonce()
	if err != nil {
		return err
	}
	if err := v.acquireLease(ctx, own, nonce); err != nil {
		return err
	}
	m, ver, err := readLiveManifest(ctx, v.store, v.name)
	if err != nil {
		return err
	}
	if ver != v.manVer {
		// Re-keyed meanwhile? Unwrap again (nothing is written yet).
		kr, err := unlock(ctx, m, v.opts.Keys)
		if err != nil {
			return err
		}
		v.resetTo(m, ver)
		v.keys = kr
	}
	if v.opts.ResumeOnly && !own.owns(m.Epoch, m.Owner) {
		return v.notOwner(own, found)
	}
	if gone, err := PruneStaleWALs(v.fs, v.opts.WALDir, v.name, v.opts.StaleRetention, time.Now()); err != nil {
		v.log.Warn("could not remove old stale WALs", "err", err)
	} else if len(gone) > 0 {
		v.log.Info("removed stale WALs past their retention", "dirs", gone, "retention", v.opts.StaleRetention)
	}
	if err := ensureReserve(v.fs, v.wdir); err != nil {
		v.log.Warn("could not make the WAL directory's reserve (kept so OWNER stays writable on a full disk)", "dir", v.wdir, "err", err)
	}
	segFiles, err := v.listSegments()
	if err != nil {
		return err
	}
	if len(segFiles) > 0 && !own.owns(m.Epoch, m.Owner) {
		if err := v.quarantine(segFiles); err != nil {
			return err
		}
		segFiles = nil
	}
	// Read and verify the WAL before taking ownership, so a corrupt WAL
	// leaves the backend untouched.
	replayedTrims, err := v.replay(segFiles)
	if err != nil {
		return err
	}
	// The previous owner's store log (see storelog.go): records it made
	// durable in the store that no commit holds yet.
	adopted, err := v.readStoreLog(ctx)
	if err != nil {
		return err
	}
	newEpoch := m.Epoch + 1
	if newEpoch >= 1<<24 {
		return fmt.Errorf("%w: epoch space of %s exhausted", ErrBackendState, v.name)
	}
	switch v.opts.Durability {
	case DurabilityStore:
		v.slog.on = true
	case DurabilityDefault:
		v.slog.on = m.Flags&manifest.FlagDurableStore != 0
	}
	v.adoptStoreLog(adopted, replayedTrims)
	if err := v.carryStoreLog(ctx, newEpoch, nonce, adopted); err != nil {
		return err
	}
	if err := v.writeOwner(ownerRecord{epoch: m.Epoch, nonce: m.Owner, pendingEpoch: newEpoch, pendingNonce: nonce}); err != nil {
		return fmt.Errorf("viperblock: write OWNER: %w", err)
	}
	if err := v.crashPoint("open.before-epoch-commit"); err != nil {
		return err
	}
	next := *m
	if err := ownKey(ctx, &next, v.keys, v.opts.Keys); err != nil {
		return err
	}
	next.Epoch, next.Owner = newEpoch, nonce
	next.Flags |= manifest.FlagOpen
	next.Committed = time.Now().UnixNano()
	enc := manifest.Encode(&next)
	ver, err = v.store.PutIf(ctx, manifestKey(v.name), enc, v.manVer)
	if err != nil {
		// The answer may have been lost after the store applied it (see
		// commit): if the manifest holds exactly our bump, we own it.
		cur, cv, gerr := v.store.Get(ctx, manifestKey(v.name))
		applied := gerr == nil && bytes.Equal(cur, enc)
		if !applied || v.syncManifest(ctx) != nil {
			if v.opts.ResumeOnly {
				if why := takenOver(cur, gerr, m); !applied && why != "" {
					// Our swap was conditioned on a version that has
					// moved: it never applies. Put the OWNER file back
					// as it was (best effort: the pending pair it names
					// was never committed, so it owns nothing).
					if werr := v.writeOwner(own); werr != nil {
						v.log.Warn("could not restore the OWNER file after a refused resume", "err", werr)
					}
					return fmt.Errorf("%w: %s: %s while this open was taking it back", ErrNotOwner, v.name, why)
				}
				// Not shown to be another owner's: fail plainly (not
				// fenced), so the caller checks again and retries.
				return fmt.Errorf("viperblock: take ownership of %s back: %w", v.name, err)
			}
			if errors.Is(err, backend.ErrPrecondition) {
				return fmt.Errorf("%w: %s: another writer opened it at the same time", ErrFenced, v.name)
			}
			return fmt.Errorf("viperblock: take ownership of %s: %w", v.name, err)
		}
		v.stats.resolvedCommits.Add(1)
		v.log.Warn("taking ownership reported failure but had applied; adopted", "err", err, "epoch", newEpoch)
		ver = cv
	}
	if err := v.crashPoint("open.after-epoch-commit"); err != nil {
		return err
	}
	if err := v.writeOwner(ownerRecord{epoch: newEpoch, nonce: nonce}); err != nil {
		return fmt.Errorf("viperblock: write OWNER: %w", err)
	}
	v.man, v.manVer, v.manSum, v.epoch, v.owner = &next, ver, sha256.Sum256(enc), newEpoch, nonce
	v.slog.dir = storeLogDir(v.name, newEpoch, nonce)
	v.slog.upTo = m.SeqHW
	v.cleanStoreLog(ctx)
	if v.keys != nil {
		a, err := v.keys.walKey(v.keys.write, newEpoch)
		if err != nil {
			return err
		}
		v.walAEAD = a
	}
	v.gen++
	for i := range v.shards {
		v.shards[i].seg = v.newSegment(i, v.gen)
	}
	return nil
}

// takenOver says, for a resume-only open whose epoch bump from manifest m
// failed, who has the volume according to the manifest read back (cur, or
// the read's error getErr): "" unless that shows another owner (or none).
// Anything else (an unreadable manifest, or m's owner with other content,
// as after an expansion) is no proof of a takeover: the open fails with a
// plain error and is retried.
func takenOver(cur []byte, getErr error, m *manifest.Manifest) string {
	if errors.Is(getErr, backend.ErrNotFound) {
		return "the volume was deleted"
	}
	if getErr != nil {
		return ""
	}
	got, err := manifest.Decode(cur)
	if err != nil || (got.Epoch == m.Epoch && got.Owner == m.Owner) {
		return ""
	}
	return fmt.Sprintf("another owner (epoch %d, nonce %x) took it over", got.Epoch, got.Owner[:4])
}

// notOwner is the error of a resume-only open whose WAL directory (OWNER
// file own, found or not) does not own the manifest.
func (v *Volume) notOwner(own ownerRecord, found bool) error {
	m := v.man
	if !found {
		return fmt.Errorf("%w: %s: no OWNER file in %s", ErrNotOwner, v.name, v.wdir)
	}
	return fmt.Errorf("%w: %s: the store's owner is epoch %d, nonce %x; the WAL at %s was written under epoch %d, nonce %x",
		ErrNotOwner, v.name, m.Epoch, m.Owner[:4], v.wdir, own.epoch, own.nonce[:4])
}

// resetTo makes manifest m (at version ver), read after taking the lease,
// the state the open starts from.
func (v *Volume) resetTo(m *manifest.Manifest, ver backend.Version) {
	v.man, v.manVer, v.epoch, v.owner = m, ver, m.Epoch, m.Owner
	v.committedHW.Store(m.SeqHW)
	v.size.Store(m.Size)
	v.seq.Store(max(v.seq.Load(), m.SeqHW))
	v.bmap.Store(blockmap.New(m.Extents))
	v.compression = m.Compression
	v.setChunkSizes(m)
}

type segFile struct {
	shard int
	gen   uint64
	path  string
}

func (v *Volume) listSegments() ([]segFile, error) {
	var out []segFile
	for i := 0; i < nShards; i++ {
		dir := v.shardDir(i)
		if err := vfs.MkdirAllDurable(v.fs, dir); err != nil {
			return nil, err
		}
		names, err := v.fs.ReadDir(dir)
		if err != nil {
			return nil, err
		}
		for _, n := range names {
			if strings.HasSuffix(n, walFreeSuffix) {
				// A free file of an earlier open (see log.go): its
				// records are all committed.
				if err := v.fs.Remove(filepath.Join(dir, n)); err != nil && !errors.Is(err, fs.ErrNotExist) {
					return nil, err
				}
				continue
			}
			g, ok := strings.CutSuffix(n, ".wal")
			if !ok {
				continue
			}
			gen, err := strconv.ParseUint(g, 16, 64)
			if err != nil {
				return nil, fmt.Errorf("%w: unexpected WAL file %s", ErrCorrupt, filepath.Join(dir, n))
			}
			out = append(out, segFile{i, gen, filepath.Join(dir, n)})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].shard != out[j].shard {
			return out[i].shard < out[j].shard
		}
		return out[i].gen < out[j].gen
	})
	return out, nil
}

// quarantine moves a stale WAL (written by an owner whose epoch another node
// has since superseded) out of the way, keeping it for inspection.
func (v *Volume) quarantine(files []segFile) error {
	dir := filepath.Join(v.wdir, fmt.Sprintf("stale-%d", time.Now().UnixNano()))
	if err := vfs.MkdirAllDurable(v.fs, dir); err != nil {
		return err
	}
	for _, f := range files {
		if err := v.fs.Rename(f.path, filepath.Join(dir, fmt.Sprintf("%02d-%s", f.shard, filepath.Base(f.path)))); err != nil {
			return err
		}
	}
	for i := 0; i < nShards; i++ {
		if err := vfs.SyncDir(v.fs, v.shardDir(i)); err != nil {
			return err
		}
	}
	if err := vfs.SyncDir(v.fs, dir); err != nil {
		return err
	}
	v.log.Warn("WAL superseded by another owner's commits: its unuploaded writes are not replayed; kept for inspection",
		"segments", len(files), "dir", dir, "epoch", v.man.Epoch)
	return nil
}

// replay reads the WAL segments back into memory as sealed segments, so the
// block store serves their data and the next drain uploads it. It returns
// the trims it read.
func (v *Volume) replay(files []segFile) ([]trimRange, error) {
	type rec struct {
		seg *segment
		sl  *slab
		off int
		r   wal.Record
	}
	var writes []rec
	var trims []trimRange
	hw := v.man.SeqHW
	for _, f := range files {
		data, err := vfs.ReadFile(v.fs, f.path)
		if err != nil {
			return nil, fmt.Errorf("viperblock: read WAL %s: %w", f.path, err)
		}
		h, hlen, err := wal.DecodeSegmentHeader(data)
		if errors.Is(err, wal.ErrTornTail) {
			// Created, header never fully written: nothing in it was flushed.
			v.log.Warn("WAL segment with a torn header discarded", "file", f.path)
			if err := v.fs.Remove(f.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return nil, err
			}
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%w: WAL %s: %v", ErrCorrupt, f.path, err)
		}
		if h.Volume != v.name || int(h.Shard) != f.shard {
			return nil, fmt.Errorf("%w: WAL %s belongs to volume %q shard %d", ErrCorrupt, f.path, h.Volume, h.Shard)
		}
		body := data[hlen:]
		sl := &slab{buf: body}
		salt := h.Salt
		if h.Version == wal.Version1 {
			salt = binary.LittleEndian.Uint32([]byte(wal.RecordMagic)) // what its records begin with
		}
		seg := &segment{shard: f.shard, gen: f.gen, path: f.path, recovered: true, slabs: []*slab{sl}, salt: salt, alloc: int64(len(data))}
		rd := wal.NewSegment(h, body)
		for {
			r, n, err := rd.Next()
			off := rd.Offset()
			if err == nil {
				if err := v.takeRecord(r); err != nil {
					return nil, fmt.Errorf("WAL %s at offset %d: %w", f.path, hlen+off-n, err)
				}
				if r.Seq > hw {
					if r.IsBlock() {
						writes = append(writes, rec{seg, sl, off - n, r})
					} else {
						trims = append(trims, trimRange{r.Block, uint64(r.Count), r.Seq})
					}
				}
				v.seq.Store(max(v.seq.Load(), r.Seq))
				v.stats.replayed.Add(1)
				continue
			}
			if err == io.EOF {
				break
			}
			if errors.Is(err, wal.ErrTornTail) {
				v.log.Warn("WAL torn tail discarded (writes never flushed)", "file", f.path, "offset", int64(hlen+off), "bytes", len(body)-off)
				break
			}
			return nil, fmt.Errorf("%w: WAL %s at offset %d: %v", ErrCorrupt, f.path, hlen+off, err)
		}
		off := rd.Offset()
		if len(body)-off > 1<<20 {
			// Preallocated or recycled space behind the log: do not keep
			// it in memory.
			sl.buf = append([]byte(nil), body[:off]...)
		}
		sl.used = off
		seg.size = int64(off)
		seg.written = int64(off)
		seg.wrote.Store(int64(off))
		seg.synced.Store(int64(off))
		sh := &v.shards[f.shard]
		sh.sealed = append(sh.sealed, seg)
		v.pending.Add(int64(off))
		v.gen = max(v.gen, f.gen)
	}
	v.addSealedTrims(trims)
	ws := make([]blockSeq, len(writes))
	for i, w := range writes {
		ws[i] = blockSeq{w.r.Block, w.r.Seq}
	}
	dead := trimmedLater(trims, ws)
	for i, w := range writes {
		if w.r.Block >= uint64(v.size.Load()/BlockSize) || dead != nil && dead[i] {
			continue
		}
		sh := &v.shards[w.r.Block&(nShards-1)]
		if e, ok := sh.blocks[w.r.Block]; !ok || e.seq < w.r.Seq {
			sh.blocks[w.r.Block] = entry{seq: w.r.Seq, sl: w.sl, off: w.off}
		}
	}
	if len(files) > 0 {
		v.log.Info("WAL replayed", "segments", len(files), "records", v.stats.replayed.Load(), "pending_bytes", v.pending.Load())
	}
	return trims, nil
}

// Close drains the volume to the backend and releases it. If the drain
// fails, the data stays in the flushed WAL and Close returns the error; the
// volume can be reopened on this node to retry.
func (v *Volume) Close() error {
	prev := v.state.Swap(stateClosed)
	if prev == stateClosed {
		return nil
	}
	v.wakeWaiters()
	v.ops.Lock()
	//lint:ignore SA2001 taking the lock waited for in-flight I/O to finish
	v.ops.Unlock()
	if v.opts.ReadOnly {
		return nil
	}
	if prev == stateReleasing {
		v.stopLease() // waits for the release under way
	}
	v.started.Do(func() {}) // a Start after this point starts nothing
	close(v.stop)
	v.done.Wait()
	v.removeQueued()
	var err error
	if v.released.Load() {
		// Released to another open: everything was drained then.
	} else if prev == stateFenced {
		err = fmt.Errorf("%w: %s: writes since the last commit were not uploaded", ErrFenced, v.name)
	} else {
		err = v.flush()
		if err != nil && v.walErr() == nil {
			// Only WAL writes failed for want of space (see errWALSync):
			// the records are in memory, and the drain puts them in the
			// backend, which is all Close promises.
			v.log.Warn("final flush failed; draining from memory", "err", err)
			err = nil
		}
		if err == nil {
			v.drainMu.Lock()
			v.closing = true // the final commit clears FlagOpen
			v.dirty = true
			v.drainMu.Unlock()
			err = v.closeDrain()
		}
	}
	for i := range v.shards {
		sh := &v.shards[i]
		for _, seg := range append(sh.sealed, sh.seg) {
			seg.io.Lock()
			if seg.f != nil {
				seg.f.Close()
				seg.f = nil
			}
			if seg.created && seg.size == 0 {
				_ = v.fs.Remove(seg.path) // created ahead of time, never used
			}
			seg.dead = true
			seg.io.Unlock()
		}
	}
	v.removeQueued()
	v.removeFree()
	v.stopReadCache()
	v.stopLease()
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), v.opts.LeaseDuration)
		v.giveUpLease(ctx)
		cancel()
	}
	if v.lock != nil {
		v.lock.Close()
	}
	return err
}

// removeQueued deletes the files of retired segments still queued for the
// stopped writeback goroutine.
func (v *Volume) removeQueued() {
	for {
		select {
		case seg := <-v.writeback:
			v.removeRetired(seg)
		default:
			return
		}
	}
}

// closeDrain drains with a few retries for passing backend faults.
func (v *Volume) closeDrain() error {
	var err error
	backoff := 200 * time.Millisecond
	for attempt := 0; attempt < 5; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		err = v.drain(ctx)
		cancel()
		if err == nil || errors.Is(err, ErrFenced) || errors.Is(err, errCrash) {
			return err
		}
		v.log.Warn("drain at close failed; retrying", "err", err)
		time.Sleep(backoff)
		backoff *= 2
	}
	return fmt.Errorf("viperblock: %s: drain at close failed, data kept in the WAL at %s: %w", v.name, v.wdir, err)
}

// Resize grows the volume to size bytes (rounded up to 4 KiB) and commits
// the new size. Shrinking is refused.
func (v *Volume) Resize(ctx context.Context, size int64) error {
	if err := v.checkWritable(); err != nil {
		return err
	}
	size = roundSize(size)
	v.drainMu.Lock()
	cur := v.size.Load()
	if size < cur {
		v.drainMu.Unlock()
		return fmt.Errorf("%w: cannot shrink %s from %d to %d bytes", ErrInvalidArg, v.name, cur, size)
	}
	if size > 1<<50 {
		v.drainMu.Unlock()
		return fmt.Errorf("%w: size %d exceeds 1 PiB", ErrInvalidArg, size)
	}
	if size == cur {
		v.drainMu.Unlock()
		return nil
	}
	v.size.Store(size)
	v.dirty = true
	v.drainMu.Unlock()
	return v.drain(ctx)
}

// abandon stops a volume as a crash would: no flush, no drain, nothing more
// written. Tests use it with vfs.MemFS.CrashClone.
func (v *Volume) abandon() {
	if v.state.Swap(stateClosed) == stateClosed {
		return
	}
	v.wakeWaiters()
	v.ops.Lock()
	//lint:ignore SA2001 taking the lock waited for in-flight I/O to finish
	v.ops.Unlock()
	if v.opts.ReadOnly {
		return
	}
	v.started.Do(func() {})
	close(v.stop)
	v.done.Wait()
	v.stopReadCache()
	v.stopLease()
	if v.lock != nil {
		v.lock.Close()
	}
}
