package viperblock

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/manifest"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/wal"
)

// Requests to a volume's owner.
//
// Only the owner of an open volume writes its manifest, so anyone else (a
// CSI controller) who needs the owner to act — drain before a snapshot, grow
// the volume — writes a request object and waits for a commit that answers
// it. The owner polls the object every DrainInterval.
//
// <volume>/request (version 1, 28 bytes, little-endian):
//
//	0   8  magic "VBREQST1"
//	8   8  request id (increasing; the manifest's request field records the
//	       newest id a commit answered)
//	16  8  size: grow the volume to at least this many bytes (0: only drain)
//	24  4  CRC32C of bytes [0, 24)
//
// Version 2 (36 bytes, little-endian) adds flags; it is written only for
// requests that need them (a compaction request), so an owner that reads
// only version 1 ignores it (and never answers), and version 1 requests
// keep working:
//
//	0   8  magic "VBREQST2"
//	8   8  request id, as in version 1
//	16  8  size, as in version 1
//	24  4  flags: bit 0 compact (compact every sparse chunk and sweep
//	       garbage before answering; see compact.go); other bits zero
//	28  4  reserved, zero
//	32  4  CRC32C of bytes [0, 32)
const (
	requestMagic  = "VBREQST1"
	requestMagic2 = "VBREQST2"

	requestCompact uint32 = 1 << 0
)

func requestKey(vol string) string { return vol + "/request" }

func encodeRequest(id uint64, size int64) []byte {
	b := append([]byte(requestMagic), make([]byte, 16)...)
	binary.LittleEndian.PutUint64(b[8:], id)
	binary.LittleEndian.PutUint64(b[16:], uint64(size))
	return binary.LittleEndian.AppendUint32(b, wal.CRC(b))
}

// encodeRequest2 encodes a version 2 request.
func encodeRequest2(id uint64, size int64, flags uint32) []byte {
	b := append([]byte(requestMagic2), make([]byte, 24)...)
	binary.LittleEndian.PutUint64(b[8:], id)
	binary.LittleEndian.PutUint64(b[16:], uint64(size))
	binary.LittleEndian.PutUint32(b[24:], flags)
	return binary.LittleEndian.AppendUint32(b, wal.CRC(b))
}

// decodeRequestFlags decodes a request of either version.
func decodeRequestFlags(b []byte) (id uint64, size int64, flags uint32, err error) {
	switch {
	case len(b) == 28 && string(b[:8]) == requestMagic && binary.LittleEndian.Uint32(b[24:]) == wal.CRC(b[:24]):
	case len(b) == 36 && string(b[:8]) == requestMagic2 && binary.LittleEndian.Uint32(b[32:]) == wal.CRC(b[:32]):
		flags = binary.LittleEndian.Uint32(b[24:])
		if flags&^requestCompact != 0 || binary.LittleEndian.Uint32(b[28:]) != 0 {
			return 0, 0, 0, fmt.Errorf("%w: request object has unknown flags %#x", ErrCorrupt, flags)
		}
	default:
		return 0, 0, 0, fmt.Errorf("%w: malformed request object", ErrCorrupt)
	}
	return binary.LittleEndian.Uint64(b[8:]), int64(binary.LittleEndian.Uint64(b[16:])), flags, nil
}

// askOwner asks the owner of an open volume to drain (and to grow to size,
// if size > 0), and waits until a commit answers, the volume is no longer
// open, or wait passes (then it returns nil: the caller works from the last
// committed state).
func askOwner(ctx context.Context, store backend.Store, vol string, size int64, wait time.Duration, logf func(string, ...any)) error {
	deadline := time.Now().Add(wait)
	var id uint64
	for {
		m, _, err := readLiveManifest(ctx, store, vol)
		if err != nil {
			return err
		}
		if m.Flags&manifest.FlagOpen == 0 || (id != 0 && m.Request >= id && m.Size >= size) {
			return nil
		}
		if id == 0 || m.Request >= id { // first ask, or another request overtook ours
			id = max(uint64(time.Now().UnixNano()), m.Request+1)
			if err := store.Put(ctx, requestKey(vol), encodeRequest(id, size)); err != nil {
				return fmt.Errorf("viperblock: ask the owner of %s: %w", vol, err)
			}
		}
		if time.Now().After(deadline) {
			if logf != nil {
				logf("owner of %s did not answer within %s; using its last committed state (%s old)",
					vol, wait, time.Since(time.Unix(0, m.Committed)).Round(time.Millisecond))
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// pollRequest reads the request object and, if it holds a request newer
// than the last one answered, arranges for the next drain to answer it
// (growing the volume first if asked). It reports whether a drain is due.
func (v *Volume) pollRequest(ctx context.Context) bool {
	b, _, err := v.store.Get(ctx, requestKey(v.name))
	if err != nil {
		if !errors.Is(err, backend.ErrNotFound) {
			v.log.Warn("could not read owner requests", "err", err)
		}
		return false
	}
	id, size, flags, err := decodeRequestFlags(b)
	if err != nil {
		v.log.Warn("ignoring malformed owner request", "err", err)
		return false
	}
	v.drainMu.Lock()
	defer v.drainMu.Unlock()
	if id <= v.man.Request || id <= v.request {
		return false
	}
	if flags&requestCompact != 0 {
		// The compactor answers it once it has compacted (compact.go).
		if id > v.comp.want {
			v.log.Info("compaction requested", "request", id)
			v.comp.want = id
			select {
			case v.comp.kick <- struct{}{}:
			default:
			}
		}
		return false
	}
	if size > v.size.Load() {
		size = roundSize(size)
		if size > 1<<50 {
			v.log.Warn("ignoring request to grow past 1 PiB", "size", size)
		} else {
			v.log.Info("growing on request", "from", v.size.Load(), "to", size)
			v.size.Store(size)
		}
	}
	v.request = id
	v.dirty = true
	return true
}

// Expand grows a volume to size bytes (rounded up to 4 KiB) from outside
// its owner. If a node has it open, the owner is asked to grow it and this
// waits up to wait for the answer (ErrInUse if none comes); otherwise the
// manifest is updated directly. Shrinking is ErrInvalidArg. It returns the
// new size.
func Expand(ctx context.Context, store backend.Store, vol string, size int64, wait time.Duration) (int64, error) {
	size = roundSize(size)
	if size > 1<<50 {
		return 0, fmt.Errorf("%w: size %d exceeds 1 PiB", ErrInvalidArg, size)
	}
	for attempt := 0; attempt < 20; attempt++ {
		m, ver, err := readLiveManifest(ctx, store, vol)
		if err != nil {
			return 0, err
		}
		if m.Size >= size {
			if m.Size > size && attempt == 0 {
				return m.Size, fmt.Errorf("%w: cannot shrink %s from %d to %d bytes", ErrInvalidArg, vol, m.Size, size)
			}
			return m.Size, nil
		}
		if m.Flags&manifest.FlagOpen != 0 {
			if err := askOwner(ctx, store, vol, size, wait, nil); err != nil {
				return 0, err
			}
			m, _, err := readLiveManifest(ctx, store, vol)
			if err != nil {
				return 0, err
			}
			if m.Size < size {
				if m.Flags&manifest.FlagOpen != 0 {
					return 0, fmt.Errorf("%w: the node that has %s open did not grow it within %s", ErrInUse, vol, wait)
				}
				continue // closed meanwhile: grow it here
			}
			return m.Size, nil
		}
		m.Size = size
		m.Committed = time.Now().UnixNano()
		if _, err := store.PutIf(ctx, manifestKey(vol), manifest.Encode(m), ver); err != nil {
			if errors.Is(err, backend.ErrPrecondition) {
				continue // changed (opened?) meanwhile: look again
			}
			return 0, err
		}
		return size, nil
	}
	return 0, fmt.Errorf("viperblock: expand %s: the volume kept changing; try again", vol)
}
