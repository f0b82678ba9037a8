package driver

import (
	"encoding/base64"
	"fmt"

	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/seal"
)

// SecretEncryptionKey is the CSI secret key holding a volume's key-encryption
// key (KEK): 32 bytes, raw or base64. In the provisioner secret
// (csi.storage.k8s.io/provisioner-secret-*) it makes CreateVolume create
// an encrypted volume; in the node-stage secret
// (csi.storage.k8s.io/node-stage-secret-*) it opens one. See
// docs/encryption.md.
const SecretEncryptionKey = "encryptionKey"

// volumeKey is a KEK from CSI secrets.
type volumeKey struct {
	src  *seal.FileSource
	file []byte // the key file's content: the KEK in base64
}

// encryptionKey reads the KEK from secrets: nil when there is none, and
// errInvalidSecret when it is malformed (the message never shows the key).
func encryptionKey(secrets map[string]string) (*volumeKey, error) {
	v, ok := secrets[SecretEncryptionKey]
	if !ok {
		return nil, nil
	}
	k, err := seal.ParseKey([]byte(v), "secret key "+SecretEncryptionKey)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errInvalidSecret, err)
	}
	defer clear(k[:])
	return &volumeKey{
		src:  seal.NewFileSource(k, "secret key "+SecretEncryptionKey),
		file: []byte(base64.StdEncoding.EncodeToString(k[:]) + "\n"),
	}, nil
}

// keys is the key source for engine calls: nil without a key.
func (k *volumeKey) keys() vb.KeySource {
	if k == nil {
		return nil
	}
	return k.src
}

// kekID names the key's KEK ("" without a key).
func (k *volumeKey) kekID() string {
	if k == nil {
		return ""
	}
	return k.src.KEKID()
}

// checkCloneKey checks the key a clone is created with against its source:
// a clone shares its source's chunks and inherits its keys, so an
// encrypted source needs its own KEK (the clone's later opens use it), and
// a plain source cannot give an encrypted clone.
func checkCloneKey(what string, encrypted bool, kekID string, key *volumeKey) error {
	if !encrypted && key != nil {
		return fmt.Errorf("%w: %s is not encrypted and a clone shares its data: it cannot be an encrypted volume (create it from a StorageClass without %q, or copy the data into a new encrypted volume)", vb.ErrInvalidArg, what, SecretEncryptionKey)
	}
	return checkKey(what, encrypted, kekID, key)
}

// checkKey tells whether key opens a volume (or a snapshot) described by
// encrypted and kekID, as an error for the caller to return: a missing key
// for an encrypted volume, or a key of another KEK, is vb.ErrKey
// (FailedPrecondition: the secret must change). A key given for a plain
// volume is not an error; the volume stays plain.
func checkKey(what string, encrypted bool, kekID string, key *volumeKey) error {
	if !encrypted {
		return nil
	}
	if key == nil {
		return fmt.Errorf("%w: %s is encrypted (KEK %s): give its key as %q in the StorageClass's secrets", vb.ErrKey, what, kekID, SecretEncryptionKey)
	}
	if key.src.KEKID() != kekID {
		return fmt.Errorf("%w: %s is encrypted with KEK %s; the secret's %s is KEK %s (wrong key)", vb.ErrKey, what, kekID, SecretEncryptionKey, key.src.KEKID())
	}
	return nil
}
