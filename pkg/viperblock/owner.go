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

// The OWNER file must stay writable when the WAL's disk is full: without
// it a volume cannot be opened again (restaged) on this node, although its
// writes could wait for space. So each WAL directory keeps a reserve, a
// file of reserveSize bytes written out in full (allocated, not sparse).
// When writing OWNER fails for want of space, the reserve is deleted to
// make room and the write retried; the reserve is made again when there is
// room (at the next open, or right after the write). The OWNER file is
// rewritten through a temporary file and a rename, so it needs room for a
// second copy of itself (one filesystem block) and its directory entry: a
// few KiB. 64 KiB leaves a margin for filesystems with larger blocks.
const (
	reserveName = "RESERVE"
	reserveSize = 64 << 10
)

// ensureReserve makes the WAL directory's reserve unless it is there.
func ensureReserve(fsys vfs.FS, dir string) error {
	path := filepath.Join(dir, reserveName)
	if f, err := fsys.Open(path); err == nil {
		n, serr := f.Size()
		f.Close()
		if serr == nil && n == reserveSize {
			return nil
		}
	}
	f, err := fsys.Create(path)
	if err != nil {
		return err
	}
	_, err = f.Write(make([]byte, reserveSize))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = fsys.Remove(path) // a partial reserve reserves nothing
	}
	return err
}

// writeOwner writes the OWNER file, spending the directory's reserve if the
// disk is full (see reserveName).
func (v *Volume) writeOwner(o ownerRecord) error {
	err := writeOwner(v.fs, v.wdir, o)
	if err == nil || !retryableWALErr(err) {
		return err
	}
	if rerr := v.fs.Remove(filepath.Join(v.wdir, reserveName)); rerr != nil {
		return fmt.Errorf("%w (and no reserve to free: %v)", err, rerr)
	}
	v.log.Warn("WAL disk full: spent the reserve to write the OWNER file", "dir", v.wdir)
	if err := writeOwner(v.fs, v.wdir, o); err != nil {
		return err
	}
	if err := ensureReserve(v.fs, v.wdir); err != nil {
		v.log.Warn("could not make the WAL directory's reserve again; the next open retries", "dir", v.wdir, "err", err)
	}
	return nil
}

// owns reports whether the WAL written under o belongs to the manifest's
// current owner.
func (o ownerRecord) owns(epoch uint64, nonce [16]byte) bool {
	return (o.epoch == epoch && o.nonce == nonce) || (o.pendingEpoch != 0 && o.pendingEpoch == epoch && o.pendingNonce == nonce)
}
