package viperblock

import (
	"context"
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/chunk"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/manifest"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/seal"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/wal"
)

// ErrKey reports a key problem: an encrypted volume opened without a key,
// with the wrong key (one that does not unwrap its data keys), or with a
// key file that cannot be used. Every operation that opens a volume checks
// the key first, so this error always leaves the store and the WAL as
// they were.
var ErrKey = seal.ErrKey

// KeySource supplies the key-encryption key of encrypted volumes (see
// package seal; seal.LoadKeyFile reads one from a file).
type KeySource = seal.KeySource

// Compression names a chunk compression algorithm.
type Compression string

// Compression algorithms.
const (
	CompressionNone Compression = "none"
	CompressionZstd Compression = "zstd"
	CompressionLZ4  Compression = "lz4"
)

// ParseCompression parses a compression name ("" is none).
func ParseCompression(s string) (Compression, error) {
	switch Compression(s) {
	case "", CompressionNone:
		return CompressionNone, nil
	case CompressionZstd, CompressionLZ4:
		return Compression(s), nil
	}
	return "", fmt.Errorf("%w: compression %q (want zstd, lz4 or none)", ErrInvalidArg, s)
}

func (c Compression) code() uint8 {
	switch c {
	case CompressionZstd:
		return chunk.CompressZstd
	case CompressionLZ4:
		return chunk.CompressLZ4
	}
	return chunk.CompressNone
}

func compressionName(code uint8) Compression {
	switch code {
	case chunk.CompressZstd:
		return CompressionZstd
	case chunk.CompressLZ4:
		return CompressionLZ4
	}
	return CompressionNone
}

// keyring holds a volume's unwrapped data keys.
type keyring struct {
	name  string
	keys  map[uint64]seal.Key
	write uint64 // the key new data is sealed with

	mu  sync.Mutex
	wal map[[2]uint64]cipher.AEAD // WAL record keys by (key id, epoch)
}

// unlock unwraps every key of m's table with src. A plain volume needs no
// key (src is ignored); an encrypted one fails with ErrKey unless src
// unwraps them all. Nothing is written.
func unlock(ctx context.Context, m *manifest.Manifest, src KeySource) (*keyring, error) {
	if len(m.Keys) == 0 {
		return nil, nil
	}
	if src == nil {
		kek := m.Keys[0].KEKID
		if k, ok := m.Key(m.WriteKey); ok {
			kek = k.KEKID
		}
		return nil, fmt.Errorf("%w: volume %s is encrypted and no key was given (it needs KEK %s: --encryption-key-file or VBLOCK_ENCRYPTION_KEY_FILE)", ErrKey, m.Name, kek)
	}
	kr := &keyring{name: m.Name, keys: make(map[uint64]seal.Key, len(m.Keys)), write: m.WriteKey}
	for _, wk := range m.Keys {
		dk, err := src.Unwrap(ctx, wk.KEKID, wk.Wrapped, seal.WrapAAD(wk.Origin, wk.ID))
		if err != nil {
			return nil, fmt.Errorf("volume %s, data key %016x: %w", m.Name, wk.ID, err)
		}
		kr.keys[wk.ID] = dk
	}
	return kr, nil
}

// newWrappedKey makes a fresh data key for volume name, wrapped by src.
func newWrappedKey(ctx context.Context, name string, src KeySource) (manifest.WrappedKey, seal.Key, error) {
	dk := seal.NewKey()
	id := seal.NewID()
	w, err := src.Wrap(ctx, dk, seal.WrapAAD(name, id))
	if err != nil {
		return manifest.WrappedKey{}, dk, fmt.Errorf("%w: wrap a new data key: %v", ErrKey, err)
	}
	if len(w) == 0 || len(w) > manifest.MaxWrapped {
		return manifest.WrappedKey{}, dk, fmt.Errorf("%w: the key source wrapped a data key into %d bytes", ErrKey, len(w))
	}
	return manifest.WrappedKey{ID: id, Origin: name, KEKID: src.KEKID(), Wrapped: w}, dk, nil
}

// ownKey gives m (about to be committed by a writable open of a clone) a
// data key of its own for its writes, if it has none yet: a clone starts
// with its parent's table, whose keys it may read with but does not write
// with. kr gains the key.
func ownKey(ctx context.Context, m *manifest.Manifest, kr *keyring, src KeySource) error {
	if kr == nil {
		return nil
	}
	if wk, ok := m.Key(m.WriteKey); ok && wk.Origin == m.Name {
		return nil
	}
	wk, dk, err := newWrappedKey(ctx, m.Name, src)
	if err != nil {
		return err
	}
	m.Keys = slices.Clone(m.Keys)
	m.AddKey(wk)
	m.WriteKey = wk.ID
	kr.keys[wk.ID] = dk
	kr.write = wk.ID
	return nil
}

// chunkKey returns the data key a sealed chunk names.
func (kr *keyring) chunkKey(id uint64) *seal.Key {
	if kr == nil {
		return nil
	}
	k, ok := kr.keys[id]
	if !ok {
		return nil
	}
	return &k
}

// walKey returns the AEAD of WAL records sealed with data key id by the
// owner of epoch (see package wal).
func (kr *keyring) walKey(id, epoch uint64) (cipher.AEAD, error) {
	if kr == nil {
		return nil, fmt.Errorf("%w: a sealed WAL record in a plain volume", ErrCorrupt)
	}
	kr.mu.Lock()
	defer kr.mu.Unlock()
	if a, ok := kr.wal[[2]uint64{id, epoch}]; ok {
		return a, nil
	}
	dk, ok := kr.keys[id]
	if !ok {
		return nil, fmt.Errorf("%w: a WAL record is sealed with data key %016x, which the volume does not hold", ErrCorrupt, id)
	}
	if kr.wal == nil {
		kr.wal = map[[2]uint64]cipher.AEAD{}
	}
	a := seal.Subkey(dk, nil, walPurpose, binary.LittleEndian.AppendUint64(append([]byte(kr.name), 0), epoch))
	kr.wal[[2]uint64{id, epoch}] = a
	return a, nil
}

const walPurpose = "viperblock wal v2"

// chunkParams says how v writes chunks: version 1 (ok false) or version 2
// with these parameters.
func (v *Volume) chunkParams() (chunk.Params, bool) {
	p := chunk.Params{Compression: v.compression, ExtentBlocks: v.extentBlocks()}
	if v.keys != nil {
		p.Sealed, p.KeyID, p.Key = true, v.keys.write, v.keys.keys[v.keys.write]
	}
	return p, p.Sealed || p.Compression != chunk.CompressNone
}

// extentBlocks is the extent size of the version 2 chunks v writes (see
// package chunk): several blocks when compressing, one otherwise.
func (v *Volume) extentBlocks() int {
	if v.compression != chunk.CompressNone {
		return chunk.ExtentBlocks
	}
	return 1
}

// finishChunk completes a chunk in the volume's format.
func (v *Volume) finishChunk(b *chunk.Builder, id uint64) []byte {
	if p, ok := v.chunkParams(); ok {
		return b.Finish2(v.name, id, p)
	}
	return b.Finish(v.name, id)
}

// blockRecLen and trimRecLen are the lengths of the WAL records v writes.
func (v *Volume) blockRecLen() int {
	if v.keys != nil {
		return wal.SealedBlockLen
	}
	return wal.BlockRecordLen
}

func (v *Volume) trimRecLen() int {
	if v.keys != nil {
		return wal.SealedTrimLen
	}
	return wal.HeaderSize
}

// putBlockRecord and putTrimRecord encode a record of the active epoch
// into a slab. An encrypted volume's records stay unsealed in memory (see
// package wal, "Unsealed records"): reads of pending blocks and the drain
// use their data as it is, and a record is sealed only when it is written
// out (writeRecords, sealInPlace), which most never are (see "Deferred
// WAL writes").
func (v *Volume) putBlockRecord(dst []byte, salt uint32, seq, b uint64, data []byte) {
	if v.keys != nil {
		wal.PutUnsealedBlock(dst, salt, seq, b, v.epoch, v.keys.write, data)
		return
	}
	wal.PutBlock(dst, salt, seq, b, data)
}

func (v *Volume) putTrimRecord(dst []byte, salt uint32, seq, b uint64, count uint32) {
	if v.keys != nil {
		wal.PutUnsealedTrim(dst, salt, seq, b, count, v.epoch, v.keys.write)
		return
	}
	wal.PutTrim(dst, salt, seq, b, count)
}

// appendSealed appends the records of recs (whole records, as a slab holds
// them) to dst as they are written to a file: unsealed ones sealed, the
// others as they are.
func (v *Volume) appendSealed(dst, recs []byte) []byte {
	for off := 0; off < len(recs); {
		typ := recs[off+4]
		if !wal.IsUnsealed(typ) {
			n := wal.RecordLen(typ)
			dst = append(dst, recs[off:off+n]...)
			off += n
			continue
		}
		var n int
		dst, n = wal.Seal(dst, recs[off:], v.recordAEAD(recs[off:]))
		off += n
	}
	return dst
}

// sealInPlace seals the unsealed records of recs (whole records) where
// they are.
func (v *Volume) sealInPlace(recs []byte) {
	if v.keys == nil {
		return
	}
	for off := 0; off < len(recs); {
		typ := recs[off+4]
		n := wal.RecordLen(typ)
		if wal.IsUnsealed(typ) {
			wal.Seal(recs[off:off], recs[off:off+n], v.recordAEAD(recs[off:]))
		}
		off += n
	}
}

// recordAEAD returns the WAL key of the unsealed record at the start of
// rec: this open's, as the records it appends are all of its epoch and
// write key.
func (v *Volume) recordAEAD(rec []byte) cipher.AEAD {
	r := wal.ParseTrusted(rec)
	if r.Epoch == v.epoch && r.KeyID == v.keys.write {
		return v.walAEAD
	}
	a, err := v.keys.walKey(r.KeyID, r.Epoch)
	if err != nil {
		panic(fmt.Sprintf("viperblock: an unsealed WAL record in memory names an unknown key: %v", err))
	}
	return a
}

// sealBufSize bounds the buffer records are sealed into on their way to a
// WAL segment file: a larger write is made in several.
const sealBufSize = 64 * wal.SealedBlockLen

var sealBufs = sync.Pool{New: func() any { b := make([]byte, 0, sealBufSize+wal.SealedBlockLen); return &b }}

// writeRecords writes parts (whole records, as slabs hold them) to w:
// sealing the unsealed records of an encrypted volume on the way, so that
// no block data reaches the file in the clear; a plain volume's parts as
// they are.
func (v *Volume) writeRecords(w io.Writer, parts [][]byte) error {
	if v.keys == nil {
		for _, p := range parts {
			if _, err := w.Write(p); err != nil {
				return err
			}
		}
		return nil
	}
	bp := sealBufs.Get().(*[]byte)
	buf := (*bp)[:0]
	defer func() { *bp = buf[:0]; sealBufs.Put(bp) }()
	for _, p := range parts {
		for off := 0; off < len(p); {
			n := wal.RecordLen(p[off+4])
			buf = v.appendSealed(buf, p[off:off+n])
			off += n
			if len(buf) >= sealBufSize {
				if _, err := w.Write(buf); err != nil {
					return err
				}
				buf = buf[:0]
			}
		}
	}
	if len(buf) > 0 {
		if _, err := w.Write(buf); err != nil {
			return err
		}
	}
	return nil
}

// recordBlock returns the block data of block record r, decrypting a
// sealed one into dst (BlockSize bytes); a plain or unsealed one's data
// aliases r.
func (v *Volume) recordBlock(r wal.Record, dst []byte) ([]byte, error) {
	if !r.Sealed() {
		return r.Data, nil
	}
	a, err := v.keys.walKey(r.KeyID, r.Epoch)
	if err != nil {
		return nil, err
	}
	return wal.Open(r, a, dst)
}

// checkRecord verifies a record read back from the disk or the store: an
// encrypted volume accepts only sealed records that authenticate (a plain
// record there was not written by the engine), a plain volume only plain
// ones. scratch holds a decrypted block (BlockSize bytes).
func (v *Volume) checkRecord(r wal.Record, scratch []byte) error {
	if (v.keys != nil) != r.Sealed() {
		if v.keys != nil {
			return fmt.Errorf("%w: an unsealed record (seq %d) in the WAL of encrypted volume %s", ErrCorrupt, r.Seq, v.name)
		}
		return fmt.Errorf("%w: a sealed record (seq %d) in the WAL of plain volume %s", ErrCorrupt, r.Seq, v.name)
	}
	if !r.Sealed() {
		return nil
	}
	a, err := v.keys.walKey(r.KeyID, r.Epoch)
	if err != nil {
		return err
	}
	if _, err := wal.Open(r, a, scratch); err != nil {
		return fmt.Errorf("%w: volume %s: %v", ErrCorrupt, v.name, err)
	}
	return nil
}

// takeRecord verifies a record read back from the local WAL, as
// checkRecord does, and unseals a sealed one where it lies: the replayed
// records are then held like those this open appends, so that reads and
// the drain do not open them again. Their segments are in their files
// already and are never written again; should the store log need them,
// sealing them again gives back the same bytes (see package wal).
func (v *Volume) takeRecord(r wal.Record) error {
	if !r.Sealed() || v.keys == nil {
		return v.checkRecord(r, nil)
	}
	a, err := v.keys.walKey(r.KeyID, r.Epoch)
	if err != nil {
		return err
	}
	if err := wal.Unseal(r, a); err != nil {
		return fmt.Errorf("%w: volume %s: %v", ErrCorrupt, v.name, err)
	}
	return nil
}

// copyEntry copies the block of block-store entry e into dst. The records
// in memory were written by this process or verified when read back, so
// a failure is a bug.
func (v *Volume) copyEntry(e entry, dst []byte) {
	r := wal.ParseTrusted(e.sl.buf[e.off:])
	d, err := v.recordBlock(r, dst)
	if err != nil {
		panic(fmt.Sprintf("viperblock: a WAL record in memory does not open: %v", err))
	}
	if len(d) > 0 && &d[0] != &dst[0] {
		copy(dst, d)
	}
}

// Rekey rewraps every data key of volume name, in its manifest and in each
// of its snapshots, from the KEK of oldKeys to the KEK of newKeys. No data
// is rewritten: the data keys stay, only their wrapping changes, one
// compare-and-swap per manifest object.
//
// It checks oldKeys first (ErrKey, nothing written, if it does not unwrap
// every key) and refuses with ErrInUse while a writer holds the volume's
// lease: a rekey never fences a serving owner. Keys already wrapped by
// newKeys' KEK are kept, so a rekey cut short is finished by running it
// again. A clone holds its own copy of its parent's wrapped keys: it is
// re-keyed on its own, and a parent's rekey leaves it alone.
func Rekey(ctx context.Context, store backend.Store, name string, oldKeys, newKeys KeySource) error {
	if oldKeys == nil || newKeys == nil {
		return fmt.Errorf("%w: rekey needs the old and the new key", ErrKey)
	}
	m, ver, err := readLiveManifest(ctx, store, name)
	if err != nil {
		return err
	}
	if len(m.Keys) == 0 {
		return fmt.Errorf("%w: volume %s is not encrypted", ErrInvalidArg, name)
	}
	type object struct {
		key string
		m   *manifest.Manifest
		ver backend.Version
	}
	objs := []object{{manifestKey(name), m, ver}}
	snapKeys, err := store.List(ctx, name+"/snapshots/")
	if err != nil {
		return err
	}
	for _, k := range snapKeys {
		s, sv, err := readSnapshot(ctx, store, name, strings.TrimPrefix(k, name+"/snapshots/"))
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		objs = append(objs, object{k, s, sv})
	}
	// Unwrap everything first: a wrong old key changes nothing.
	next := make([][]manifest.WrappedKey, len(objs))
	changed := false
	for i, o := range objs {
		for _, wk := range o.m.Keys {
			aad := seal.WrapAAD(wk.Origin, wk.ID)
			if wk.KEKID == newKeys.KEKID() {
				if _, err := newKeys.Unwrap(ctx, wk.KEKID, wk.Wrapped, aad); err == nil {
					next[i] = append(next[i], wk) // re-keyed already
					continue
				}
			}
			dk, err := oldKeys.Unwrap(ctx, wk.KEKID, wk.Wrapped, aad)
			if err != nil {
				return fmt.Errorf("rekey %s (%s), data key %016x: %w", name, o.key, wk.ID, err)
			}
			w, err := newKeys.Wrap(ctx, dk, aad)
			if err != nil {
				return fmt.Errorf("%w: rekey %s: wrap under the new key: %v", ErrKey, name, err)
			}
			next[i] = append(next[i], manifest.WrappedKey{ID: wk.ID, Origin: wk.Origin, KEKID: newKeys.KEKID(), Wrapped: w})
			changed = true
		}
	}
	if !changed {
		return nil // every key is under the new KEK already
	}
	live, epoch, err := HasLiveOwner(ctx, store, name)
	if err != nil {
		return err
	}
	if live {
		return fmt.Errorf("%w: %s is open for writing (epoch %d) and its lease is held: close it, then rekey (a rekey never takes a volume from its owner)", ErrInUse, name, epoch)
	}
	for i, o := range objs {
		c := *o.m
		c.Keys = next[i]
		if _, err := store.PutIf(ctx, o.key, manifest.Encode(&c), o.ver); err != nil {
			if errors.Is(err, backend.ErrPrecondition) {
				return fmt.Errorf("%w: %s changed during the rekey (opened or snapshotted meanwhile); run it again", ErrInUse, o.key)
			}
			return fmt.Errorf("viperblock: rekey %s: %w", o.key, err)
		}
	}
	return nil
}
