package viperblock

import (
	"context"
	"crypto/cipher"
	"encoding/binary"
	"fmt"
	"slices"
	"sync"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/chunk"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/manifest"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/seal"
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
	p := chunk.Params{Compression: v.compression}
	if v.keys != nil {
		p.Sealed, p.KeyID, p.Key = true, v.keys.write, v.keys.keys[v.keys.write]
	}
	return p, p.Sealed || p.Compression != chunk.CompressNone
}

// finishChunk completes a chunk in the volume's format.
func (v *Volume) finishChunk(b *chunk.Builder, id uint64) []byte {
	if p, ok := v.chunkParams(); ok {
		return b.Finish2(v.name, id, p)
	}
	return b.Finish(v.name, id)
}
