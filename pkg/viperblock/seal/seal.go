// Package seal holds the engine's encryption primitives: data keys, their
// wrapping under a key-encryption key (KEK), the KeySource interface that
// supplies a KEK (a key file today, a KMS tomorrow), and the per-object
// subkeys that seal chunk extents and WAL records.
//
// # Keys
//
// Every encrypted volume has one or more data keys (DK, 32 random bytes).
// A DK never reaches the store in the clear: the manifest's key table holds
// it wrapped by a KEK. A KeySource wraps and unwraps DKs; the engine never
// sees a KEK.
//
// # Wrapped data key (version 1), as a KeySource built on a local KEK
// (FileSource) encodes it
//
//	offset  size  field
//	0       1     format version (1)
//	1       12    random nonce
//	13      48    AES-256-GCM(KEK, nonce, DK, aad): 32 bytes of ciphertext
//	              then the 16-byte tag
//
// The additional data binds the wrapped key to its place: "viperblock dk\x00",
// then the name of the volume that created the key, a zero byte, then the
// key id (8 bytes, little-endian). A wrapped key copied into another
// volume's entry, or under another id, does not unwrap.
//
// # Subkeys
//
// An object (a chunk, a WAL segment's life) is never sealed with the DK
// itself: each object carries a random salt in its header and is sealed
// with its own subkey, HKDF-SHA256(DK, salt, purpose || object id). Inside
// the object the nonce is a deterministic position (an extent number, a
// record's sequence number), unique within the object. A nonce is therefore
// never reused under one key, whatever crashes, retries, epochs, nodes or
// clones do, and no key seals more than one object's worth of data, far
// below AES-GCM's limits.
package seal

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
)

// KeySize is the size of data keys and KEKs: AES-256.
const KeySize = 32

// Overhead is what sealing adds to a plaintext: the GCM tag.
const Overhead = 16

// NonceSize is the GCM nonce size.
const NonceSize = 12

// WrappedSize is the size of a DK wrapped by FileSource.
const WrappedSize = 1 + NonceSize + KeySize + Overhead

// ErrKey reports a key problem: no key given for an encrypted volume, a key
// that does not unwrap the volume's data keys (the wrong key), or a key file
// that cannot be used. The engine returns it before it changes anything.
var ErrKey = errors.New("viperblock: encryption key problem")

// ErrAuth reports sealed data that fails authentication: it was changed
// after it was sealed (or is sealed under another key). Callers report it
// as corruption.
var ErrAuth = errors.New("viperblock/seal: authentication failed")

// Key is a data key.
type Key [KeySize]byte

// NewKey returns a random data key.
func NewKey() Key {
	var k Key
	if _, err := rand.Read(k[:]); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return k
}

// NewID returns a random non-zero key id.
func NewID() uint64 {
	for {
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			panic(err)
		}
		if id := binary.LittleEndian.Uint64(b[:]); id != 0 {
			return id
		}
	}
}

// Salt fills b with random bytes.
func Salt(b []byte) {
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
}

// KeySource wraps and unwraps data keys under a key-encryption key. The
// engine calls it only when a volume is created, opened, cloned or
// re-keyed, never on the I/O path. Implementations must be safe for
// concurrent use.
//
// A KMS-backed source implements the same three methods: KEKID returns
// the KMS key's name (an ARN, a key URI), Wrap calls the KMS's encrypt
// operation with aad as its encryption context, Unwrap its decrypt
// operation; the wrapped bytes are whatever the KMS returns (at most
// MaxWrapped bytes). Unwrap must fail, wrapping ErrKey, when kekID names
// a key the source does not hold or the wrapped key does not open.
type KeySource interface {
	// KEKID names the KEK that Wrap uses, so that Unwrap can tell a
	// wrong key from tampering and an operator can tell which key a
	// volume needs. It is stored in the clear; it must not reveal the
	// key.
	KEKID() string
	// Wrap seals dk under the KEK, bound to aad.
	Wrap(ctx context.Context, dk Key, aad []byte) ([]byte, error)
	// Unwrap opens a key wrapped by the KEK kekID, bound to aad.
	Unwrap(ctx context.Context, kekID string, wrapped, aad []byte) (Key, error)
}

// MaxWrapped bounds a wrapped key's size (the manifest's limit).
const MaxWrapped = 4096

// WrapAAD is the additional data of a wrapped key: see the package doc.
func WrapAAD(volume string, keyID uint64) []byte {
	b := make([]byte, 0, 16+len(volume)+8)
	b = append(b, "viperblock dk\x00"...)
	b = append(b, volume...)
	b = append(b, 0)
	return binary.LittleEndian.AppendUint64(b, keyID)
}

// FileSource is a KeySource holding a local KEK, read from a key file.
type FileSource struct {
	kek  cipher.AEAD
	id   string
	path string
}

// NewFileSource returns a source for the KEK kek; path names it in errors.
func NewFileSource(kek [KeySize]byte, path string) *FileSource {
	blk, err := aes.NewCipher(kek[:])
	if err != nil {
		panic(err)
	}
	g, err := cipher.NewGCM(blk)
	if err != nil {
		panic(err)
	}
	return &FileSource{kek: g, id: Fingerprint(kek), path: path}
}

// Fingerprint is a local KEK's id: "sha256:" and the first 8 bytes of
// SHA-256 over a fixed prefix and the key, in hex. It names the key without
// revealing it.
func Fingerprint(kek [KeySize]byte) string {
	h := sha256.New()
	h.Write([]byte("viperblock kek fingerprint\x00"))
	h.Write(kek[:])
	return "sha256:" + hex.EncodeToString(h.Sum(nil)[:8])
}

// KEKID implements KeySource.
func (f *FileSource) KEKID() string { return f.id }

// Wrap implements KeySource.
func (f *FileSource) Wrap(_ context.Context, dk Key, aad []byte) ([]byte, error) {
	out := make([]byte, 1+NonceSize, WrappedSize)
	out[0] = 1
	Salt(out[1 : 1+NonceSize])
	return f.kek.Seal(out, out[1:1+NonceSize], dk[:], aad), nil
}

// Unwrap implements KeySource.
func (f *FileSource) Unwrap(_ context.Context, kekID string, wrapped, aad []byte) (Key, error) {
	var k Key
	if kekID != f.id {
		return k, fmt.Errorf("%w: the volume's data key is wrapped by KEK %s, the key file %s holds KEK %s (wrong key)", ErrKey, kekID, f.path, f.id)
	}
	if len(wrapped) != WrappedSize || wrapped[0] != 1 {
		return k, fmt.Errorf("%w: wrapped data key of %d bytes, version %d: not one this build reads", ErrKey, len(wrapped), firstByte(wrapped))
	}
	pt, err := f.kek.Open(nil, wrapped[1:1+NonceSize], wrapped[1+NonceSize:], aad)
	if err != nil {
		return k, fmt.Errorf("%w: the data key does not unwrap with the key file %s (KEK %s): the wrapped key was altered or moved", ErrKey, f.path, f.id)
	}
	copy(k[:], pt)
	return k, nil
}

func firstByte(b []byte) int {
	if len(b) == 0 {
		return -1
	}
	return int(b[0])
}

// ParseKey decodes a KEK file's content: exactly 32 raw bytes, or their
// standard base64 encoding (padded or not; surrounding whitespace is
// ignored). name names the file in errors.
func ParseKey(data []byte, name string) ([KeySize]byte, error) {
	var k [KeySize]byte
	if len(data) == KeySize {
		copy(k[:], data)
		return k, nil
	}
	s := strings.TrimSpace(string(data))
	if s == "" {
		return k, fmt.Errorf("%w: key file %s is empty (want 32 raw bytes or their base64 encoding)", ErrKey, name)
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil {
			if len(b) != KeySize {
				return k, fmt.Errorf("%w: key file %s holds base64 of %d bytes, want %d", ErrKey, name, len(b), KeySize)
			}
			copy(k[:], b)
			return k, nil
		}
	}
	return k, fmt.Errorf("%w: key file %s holds %d bytes that are neither a raw 32-byte key nor base64 of one", ErrKey, name, len(data))
}

// LoadKeyFile reads a KEK file (see ParseKey) and returns its source.
func LoadKeyFile(path string) (*FileSource, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: read key file: %v", ErrKey, err)
	}
	k, err := ParseKey(data, path)
	clear(data)
	if err != nil {
		return nil, err
	}
	return NewFileSource(k, path), nil
}

// Subkey returns the AEAD sealing one object: AES-256-GCM under
// HKDF-SHA256(dk, salt, info), where info is purpose, a zero byte, then id.
func Subkey(dk Key, salt []byte, purpose string, id []byte) cipher.AEAD {
	info := make([]byte, 0, len(purpose)+1+len(id))
	info = append(append(append(info, purpose...), 0), id...)
	sk, err := hkdf.Key(sha256.New, dk[:], salt, string(info), KeySize)
	if err != nil {
		panic(err)
	}
	blk, err := aes.NewCipher(sk)
	if err != nil {
		panic(err)
	}
	g, err := cipher.NewGCM(blk)
	if err != nil {
		panic(err)
	}
	return g
}

// Nonce returns the nonce for position pos within an object: 4 bytes of
// kind then pos, little-endian.
func Nonce(kind uint32, pos uint64) [NonceSize]byte {
	var n [NonceSize]byte
	binary.LittleEndian.PutUint32(n[:], kind)
	binary.LittleEndian.PutUint64(n[4:], pos)
	return n
}
