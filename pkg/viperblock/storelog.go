package viperblock

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/wal"
)

// # Durability classes
//
// DurabilityNode (the default): a Flush returns once its writes are in this
// node's WAL, fsynced. If the node is lost for good, so is what it wrote
// since its last commit (at most a drain interval's worth, or as long as
// the store was unreachable); if another node takes the volume over after
// its lease expired (the owner was paused or partitioned), the owner's
// writes since its last commit are set aside with its WAL (see quarantine).
//
// DurabilityStore: a Flush returns only once everything it covers is also
// durable in the object store, in a store-log object. Concurrent flushes
// share one PUT (group commit: the first flush to take the upload lock
// uploads everything written so far; the flushes queued behind it find
// their writes covered). So losing a node, or having its lease run out,
// loses nothing that was confirmed: the next owner reads the store log of
// the epoch it takes over and adopts every record the manifest does not
// hold yet. The volume's class is recorded in the manifest
// (manifest.FlagDurableStore); Options.Durability overrides it for one open.
//
// # The store log
//
// Objects <volume>/wal/<epoch:016x>-<nonce:32 hex>/<counter:016x>, one per
// group commit of the open that owns (epoch, nonce), counters from 1:
//
//	offset  size  field
//	0       8     magic "VBSTLOG1"
//	8       2     format version (2; version 1 is read too)
//	10      2     reserved, zero
//	12      4     length L of the records
//	16      8     epoch
//	24      8     counter
//	32      8     lowest sequence number of the records
//	40      8     highest sequence number of the records
//	48      L     WAL records back to back, exactly as in WAL segments
//	              (package wal; each carries its own CRC32C). Version 2
//	              holds records of wal format version 2 (each begins
//	              with its segment's salt) or 1; version 1 only
//	              records of wal format version 1.
//	48+L    4     CRC32C of bytes [0, 48+L)
//
// A writable Open lists the store log of the manifest's (epoch, owner
// nonce), verifies every object, and takes the records above the
// manifest's sequence high-water mark into memory like a replayed WAL.
// Before it bumps the epoch it writes them again as the first object of
// its own (epoch, nonce), so that once the bump commits, the new epoch's
// log holds them: an object of an older epoch is never read again, which
// is what makes a stale owner's late upload harmless. After the bump it
// deletes the logs of other (epoch, nonce) pairs; every commit deletes the
// objects it covers (highest sequence number at or below the committed
// high-water mark); Close deletes the rest of its own.

// Durability is a volume's durability class.
type Durability string

// Durability classes (see above).
const (
	DurabilityDefault Durability = ""      // the volume's recorded class
	DurabilityNode    Durability = "node"  // a flush is durable in the node's WAL
	DurabilityStore   Durability = "store" // a flush is durable in the object store
)

// ParseDurability parses "node" or "store".
func ParseDurability(s string) (Durability, error) {
	switch d := Durability(strings.ToLower(strings.TrimSpace(s))); d {
	case DurabilityNode, DurabilityStore:
		return d, nil
	}
	return "", fmt.Errorf("%w: durability %q: want node or store", ErrInvalidArg, s)
}

const (
	storeLogMagic   = "VBSTLOG1"
	storeLogHeader  = 48
	storeLogVersion = 2
)

func storeLogPrefix(vol string) string { return vol + "/wal/" }

func storeLogDir(vol string, epoch uint64, nonce [16]byte) string {
	return fmt.Sprintf("%s%016x-%s/", storeLogPrefix(vol), epoch, hex.EncodeToString(nonce[:]))
}

func encodeStoreLog(epoch, counter, first, last uint64, recs []byte) []byte {
	b := make([]byte, storeLogHeader, storeLogHeader+len(recs)+4)
	copy(b, storeLogMagic)
	binary.LittleEndian.PutUint16(b[8:], storeLogVersion)
	binary.LittleEndian.PutUint32(b[12:], uint32(len(recs)))
	binary.LittleEndian.PutUint64(b[16:], epoch)
	binary.LittleEndian.PutUint64(b[24:], counter)
	binary.LittleEndian.PutUint64(b[32:], first)
	binary.LittleEndian.PutUint64(b[40:], last)
	b = append(b, recs...)
	return binary.LittleEndian.AppendUint32(b, wal.CRC(b))
}

// decodeStoreLog verifies a store-log object and returns its epoch and its
// records (each verified).
func decodeStoreLog(b []byte) (epoch uint64, recs []wal.Record, err error) {
	if len(b) < storeLogHeader+4 || string(b[:8]) != storeLogMagic {
		return 0, nil, fmt.Errorf("%w: store-log object malformed (%d bytes)", ErrCorrupt, len(b))
	}
	if v := binary.LittleEndian.Uint16(b[8:]); v != 1 && v != storeLogVersion {
		return 0, nil, fmt.Errorf("%w: store-log object version %d", ErrCorrupt, v)
	}
	n := int(binary.LittleEndian.Uint32(b[12:]))
	if n != len(b)-storeLogHeader-4 {
		return 0, nil, fmt.Errorf("%w: store-log object says %d record bytes, holds %d", ErrCorrupt, n, len(b)-storeLogHeader-4)
	}
	if binary.LittleEndian.Uint32(b[len(b)-4:]) != wal.CRC(b[:len(b)-4]) {
		return 0, nil, fmt.Errorf("%w: store-log object CRC mismatch", ErrCorrupt)
	}
	epoch = binary.LittleEndian.Uint64(b[16:])
	body := b[storeLogHeader : len(b)-4]
	for off := 0; off < len(body); {
		r, k, err := wal.DecodeAny(body[off:])
		if err != nil {
			return 0, nil, fmt.Errorf("%w: store-log record at %d: %v", ErrCorrupt, off, err)
		}
		recs = append(recs, r)
		off += k
	}
	return epoch, recs, nil
}

// storeLog is an open's store log. mu serializes uploads and guards the
// fields and every segment's uploaded offset.
type storeLog struct {
	mu      sync.Mutex
	on      bool   // DurabilityStore
	dir     string // this open's log directory (after the epoch bump)
	counter uint64
	upTo    uint64 // every record with a sequence number at or below it is uploaded or committed
	objs    []storeLogObj
}

type storeLogObj struct {
	key  string
	last uint64
}

// storeLogUploads: a build with the tag viperblock_nostorelog confirms
// flushes without uploading the store log (see storelogcheck_off.go).
var storeLogUploads = true

// committedSeq is the committed manifest's sequence high-water mark.
func (v *Volume) committedSeq() uint64 { return v.committedHW.Load() }

// uploadTail makes every write that completed before it durable in the
// store log (group commit; see above).
func (v *Volume) uploadTail(ctx context.Context) error {
	if !storeLogUploads {
		return nil
	}
	target := v.seq.Load()
	sl := &v.slog
	sl.mu.Lock()
	defer sl.mu.Unlock()
	if sl.upTo >= target {
		return nil
	}
	// Only the owner writes to its store log (see confirm).
	if err := v.mayUpload(ctx); err != nil {
		return err
	}
	hw := v.seq.Load()
	committed := v.committedSeq()
	type mark struct {
		seg  *segment
		size int64
	}
	var marks []mark
	var buf []byte
	first, last := uint64(0), uint64(0)
	// collect appends seg's records not yet uploaded (and not committed)
	// to buf. The segment's shard lock must be held.
	collect := func(seg *segment) {
		if seg.uploaded >= seg.size {
			return
		}
		var pos int64
		for _, s := range seg.slabs {
			end := pos + int64(s.used)
			for off := max(seg.uploaded-pos, 0); pos+off < end; {
				r := wal.ParseTrusted(s.buf[off:])
				n := int64(wal.RecordLen(r.Type))
				if r.Seq > committed {
					buf = append(buf, s.buf[off:off+n]...)
					if first == 0 || r.Seq < first {
						first = r.Seq
					}
					last = max(last, r.Seq)
				}
				off += n
			}
			pos = end
		}
		marks = append(marks, mark{seg, seg.size})
	}
	for i := range v.shards {
		sh := &v.shards[i]
		sh.mu.Lock()
		for _, seg := range sh.sealed {
			collect(seg)
		}
		collect(sh.seg)
		sh.mu.Unlock()
	}
	if len(buf) > 0 {
		// Sealed out of the shard locks: the copies are ours.
		v.sealInPlace(buf)
		sl.counter++
		key := sl.dir + fmt.Sprintf("%016x", sl.counter)
		if err := v.store.Put(ctx, key, encodeStoreLog(v.epoch, sl.counter, first, last, buf)); err != nil {
			return fmt.Errorf("viperblock: %s: upload the store log: %w", v.name, err)
		}
		sl.objs = append(sl.objs, storeLogObj{key, last})
		v.stats.storeLogPuts.Add(1)
	}
	for _, m := range marks {
		m.seg.uploaded = m.size
	}
	sl.upTo = hw
	return nil
}

// trimStoreLog deletes this open's store-log objects that commit hw covers.
func (v *Volume) trimStoreLog(ctx context.Context, hw uint64) {
	sl := &v.slog
	sl.mu.Lock()
	var del []string
	keep := sl.objs[:0]
	for _, o := range sl.objs {
		if o.last <= hw {
			del = append(del, o.key)
		} else {
			keep = append(keep, o)
		}
	}
	sl.objs = keep
	sl.mu.Unlock()
	for _, k := range del {
		if err := v.store.Delete(ctx, k); err != nil {
			v.log.Warn("could not delete a committed store-log object; the next open removes it", "key", k, "err", err)
		}
	}
}

// readStoreLog reads the store log of the manifest's (epoch, owner) and
// returns its records above the manifest's high-water mark, in sequence
// order.
func (v *Volume) readStoreLog(ctx context.Context) ([]wal.Record, error) {
	m := v.man
	dir := storeLogDir(v.name, m.Epoch, m.Owner)
	keys, err := v.store.List(ctx, dir)
	if err != nil {
		return nil, fmt.Errorf("viperblock: list the store log of %s: %w", v.name, err)
	}
	var out []wal.Record
	for _, k := range keys {
		if _, err := strconv.ParseUint(strings.TrimPrefix(k, dir), 16, 64); err != nil {
			return nil, fmt.Errorf("%w: unexpected store-log object %s", ErrCorrupt, k)
		}
		b, _, err := v.store.Get(ctx, k)
		if errors.Is(err, backend.ErrNotFound) {
			continue // deleted by a commit meanwhile: covered
		}
		if err != nil {
			return nil, fmt.Errorf("viperblock: read %s: %w", k, err)
		}
		epoch, recs, err := decodeStoreLog(b)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", k, err)
		}
		if epoch != m.Epoch {
			return nil, fmt.Errorf("%w: %s holds epoch %d", ErrCorrupt, k, epoch)
		}
		var scratch [BlockSize]byte
		for _, r := range recs {
			if err := v.checkRecord(r, scratch[:]); err != nil {
				return nil, fmt.Errorf("%s: %w", k, err)
			}
			if r.Seq > m.SeqHW {
				out = append(out, r)
			}
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Seq < out[j].Seq })
	return out, nil
}

// adoptStoreLog takes records read from an earlier owner's store log into
// the block store (as replay does for a local WAL): one sealed segment per
// shard, held in memory only (they are in the store log: see
// carryStoreLog), drained with the rest. replayed are the trims replay read
// from the local WAL.
func (v *Volume) adoptStoreLog(recs []wal.Record, replayed []trimRange) {
	if len(recs) == 0 {
		return
	}
	var bufs [nShards][]byte
	var adopted []trimRange
	var ws []blockSeq
	for _, r := range recs {
		i := 0
		if r.IsBlock() {
			i = int(r.Block & (nShards - 1))
			ws = append(ws, blockSeq{r.Block, r.Seq})
		} else {
			adopted = append(adopted, trimRange{r.Block, uint64(r.Count), r.Seq})
		}
		bufs[i] = append(bufs[i], encodeRecord(r)...)
		v.seq.Store(max(v.seq.Load(), r.Seq))
	}
	v.addSealedTrims(adopted)
	// A block record is dead if a newer trim, adopted or replayed from
	// the local WAL, covers its block.
	deadSeq := map[uint64]bool{}
	for i, dead := range trimmedLater(append(slices.Clone(replayed), adopted...), ws) {
		if dead {
			deadSeq[ws[i].seq] = true
		}
	}
	// A write replayed from the local WAL is dead too if an adopted trim
	// is newer: the local WAL can lack a trim that reached the store log
	// (uploaded, then the node crashed before its local fsync). Dropping
	// its block-store entry makes reads see the trim now, as the next
	// drain will, rather than the old data until then.
	if len(adopted) > 0 {
		var old []blockSeq
		for i := range v.shards {
			for b, e := range v.shards[i].blocks {
				old = append(old, blockSeq{b, e.seq})
			}
		}
		for i, dead := range trimmedLater(adopted, old) {
			if dead {
				delete(v.shards[old[i].block&(nShards-1)].blocks, old[i].block)
			}
		}
	}
	for i, buf := range bufs {
		if len(buf) == 0 {
			continue
		}
		sl := &slab{buf: buf, used: len(buf)}
		n := int64(len(buf))
		seg := &segment{shard: i, slabs: []*slab{sl}, size: n, written: n, uploaded: n}
		seg.synced.Store(n)
		seg.wrote.Store(n)
		sh := &v.shards[i]
		for off := 0; off < len(buf); {
			r := wal.ParseTrusted(buf[off:])
			if r.Sealed() && v.takeRecord(r) == nil { // verified already: opened once, here
				r = wal.ParseTrusted(buf[off:])
			}
			if r.IsBlock() && r.Block < uint64(v.size.Load()/BlockSize) && !deadSeq[r.Seq] {
				if e, ok := sh.blocks[r.Block]; !ok || e.seq < r.Seq {
					sh.blocks[r.Block] = entry{seq: r.Seq, sl: sl, off: off}
				}
			}
			off += wal.RecordLen(r.Type)
		}
		sh.sealed = append(sh.sealed, seg)
		v.pending.Add(n)
	}
	v.log.Info("adopted the previous owner's store log", "records", len(recs))
}

// encodeRecord encodes a WAL record as the WAL and the store log hold it,
// with the salt (or version 1 magic) it was read with. The records an open
// adopts are held in memory and in the store log only, never written to a
// WAL segment file, so their salts need not be their segment's.
func encodeRecord(r wal.Record) []byte {
	b := make([]byte, wal.RecordLen(r.Type))
	if r.Sealed() {
		// Carried as it is: the salt is outside its seal.
		copy(b, r.Raw)
		binary.LittleEndian.PutUint32(b, r.Salt)
		return b
	}
	if r.Type == wal.TypeBlock {
		wal.PutBlock(b, r.Salt, r.Seq, r.Block, r.Data)
	} else {
		wal.PutTrim(b, r.Salt, r.Seq, r.Block, r.Count)
	}
	return b
}

// carryStoreLog writes the adopted records as the first object of the
// store log of (epoch, nonce), the epoch this open is about to commit.
func (v *Volume) carryStoreLog(ctx context.Context, epoch uint64, nonce [16]byte, recs []wal.Record) error {
	if len(recs) == 0 {
		return nil
	}
	var buf []byte
	for _, r := range recs {
		buf = append(buf, encodeRecord(r)...)
	}
	key := storeLogDir(v.name, epoch, nonce) + fmt.Sprintf("%016x", 1)
	if err := v.store.Put(ctx, key, encodeStoreLog(epoch, 1, recs[0].Seq, recs[len(recs)-1].Seq, buf)); err != nil {
		return fmt.Errorf("viperblock: %s: carry the previous owner's store log: %w", v.name, err)
	}
	sl := &v.slog
	sl.counter = 1
	sl.objs = append(sl.objs, storeLogObj{key, recs[len(recs)-1].Seq})
	return nil
}

// cleanStoreLog deletes the store logs of every (epoch, nonce) but ours
// (best effort).
func (v *Volume) cleanStoreLog(ctx context.Context) {
	keys, err := v.store.List(ctx, storeLogPrefix(v.name))
	if err != nil {
		v.log.Warn("could not list the store log to clean it", "err", err)
		return
	}
	for _, k := range keys {
		if strings.HasPrefix(k, v.slog.dir) {
			continue
		}
		if err := v.store.Delete(ctx, k); err != nil {
			v.log.Warn("could not delete an old store-log object", "key", k, "err", err)
		}
	}
}
