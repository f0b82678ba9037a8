package viperblock

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/vfs"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/wal"
)

// The OWNER file says which ownership epoch the WAL directory's segments
// belong to. A writable open compares it with the manifest: if the
// manifest's (epoch, nonce) is the file's current or pending pair, nobody
// else has owned the volume since this WAL was written, and it is replayed;
// otherwise another node took the volume over, the WAL is stale, and it is
// moved aside. The open writes the file twice, before and after the
// manifest's compare-and-swap, so a crash between the two still recognises
// the WAL. Written atomically (temp, fsync, rename, directory fsync).
//
//	offset  size  field
//	0       8     magic "VBOWNER1"
//	8       2     format version (1)
//	10      6     reserved, zero
//	16      8     current epoch
//	24      16    current nonce
//	40      8     pending epoch (0: none)
//	48      16    pending nonce
//	64      4     CRC32C of bytes [0, 64)
type ownerRecord struct {
	epoch        uint64
	nonce        [16]byte
	pendingEpoch uint64
	pendingNonce [16]byte
}

const ownerMagic = "VBOWNER1"

func (o ownerRecord) encode() []byte {
	b := make([]byte, 0, 68)
	b = append(b, ownerMagic...)
	b = binary.LittleEndian.AppendUint16(b, 1)
	b = append(b, 0, 0, 0, 0, 0, 0)
	b = binary.LittleEndian.AppendUint64(b, o.epoch)
	b = append(b, o.nonce[:]...)
	b = binary.LittleEndian.AppendUint64(b, o.pendingEpoch)
	b = append(b, o.pendingNonce[:]...)
	return binary.LittleEndian.AppendUint32(b, wal.CRC(b))
}

func decodeOwner(b []byte) (ownerRecord, error) {
	var o ownerRecord
	if len(b) != 68 || string(b[:8]) != ownerMagic {
		return o, fmt.Errorf("%w: OWNER file malformed (%d bytes)", ErrCorrupt, len(b))
	}
	if v := binary.LittleEndian.Uint16(b[8:]); v != 1 {
		return o, fmt.Errorf("%w: OWNER file version %d", ErrCorrupt, v)
	}
	if binary.LittleEndian.Uint32(b[64:]) != wal.CRC(b[:64]) {
		return o, fmt.Errorf("%w: OWNER file CRC mismatch", ErrCorrupt)
	}
	o.epoch = binary.LittleEndian.Uint64(b[16:])
	copy(o.nonce[:], b[24:40])
	o.pendingEpoch = binary.LittleEndian.Uint64(b[40:])
	copy(o.pendingNonce[:], b[48:64])
	return o, nil
}

// readOwner reads the OWNER file; a missing file is the zero record.
func readOwner(fsys vfs.FS, dir string) (ownerRecord, bool, error) {
	b, err := vfs.ReadFile(fsys, filepath.Join(dir, "OWNER"))
	if errors.Is(err, fs.ErrNotExist) {
		return ownerRecord{}, false, nil
	}
	if err != nil {
		return ownerRecord{}, false, err
	}
	o, err := decodeOwner(b)
	return o, err == nil, err
}

func writeOwner(fsys vfs.FS, dir string, o ownerRecord) error {
	return vfs.WriteFileAtomic(fsys, filepath.Join(dir, "OWNER"), o.encode())
}

// owns reports whether the WAL written under o belongs to the manifest's
// current owner.
func (o ownerRecord) owns(epoch uint64, nonce [16]byte) bool {
	return (o.epoch == epoch && o.nonce == nonce) || (o.pendingEpoch != 0 && o.pendingEpoch == epoch && o.pendingNonce == nonce)
}
