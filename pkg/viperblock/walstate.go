package viperblock

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/wal"
)

// WALState is what a volume's WAL on this node holds that the store may not
// have yet. The engine deletes (or recycles) a segment once everything in
// it is in the store, so every record of the segments counts as pending.
// A segment of wal format version 2 counts its header and records (read
// from the record headers) and its age from the creation time in its
// header: its file may be preallocated or recycled. A segment without
// records is not counted. Other files count their size and their birth
// time. A stale WAL set
// aside (stale-*) is not counted: it is never replayed.
type WALState struct {
	Segments     int
	PendingBytes int64
	// Oldest is when the oldest segment was created (its birth time where
	// the filesystem records one, else its last modification); zero
	// without segments.
	Oldest time.Time
}

// InspectWAL measures the WAL that volume name has under walDir on the
// local disk, without opening the volume or taking its lock (it may be
// open in another process, such as nbdkit). No WAL directory is a zero
// WALState. Segments that vanish while it looks (drained meanwhile) are
// skipped.
func InspectWAL(walDir, name string) (WALState, error) {
	var ws WALState
	if err := validName(name); err != nil {
		return ws, err
	}
	wdir := filepath.Join(walDir, name)
	for i := 0; i < nShards; i++ {
		shard := filepath.Join(wdir, fmt.Sprintf("%02d", i))
		ents, err := os.ReadDir(shard)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return ws, err
		}
		for _, e := range ents {
			g, ok := strings.CutSuffix(e.Name(), ".wal")
			if !ok {
				continue
			}
			if _, err := strconv.ParseUint(g, 16, 64); err != nil {
				continue
			}
			path := filepath.Join(shard, e.Name())
			size, born, err := fileSizeBirth(path)
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				return ws, err
			}
			if n, created, ok := segmentSpan(path); ok {
				if n == 0 {
					continue // created ahead of its first write, or recycled and not written yet
				}
				size, born = n, created
			}
			ws.Segments++
			ws.PendingBytes += size
			if ws.Oldest.IsZero() || born.Before(ws.Oldest) {
				ws.Oldest = born
			}
		}
	}
	return ws, nil
}

// segmentSpan reads the header of a version 2 segment file and returns the
// bytes of its header and records and its creation time; ok is false for
// any other file.
func segmentSpan(path string) (n int64, created time.Time, ok bool) {
	f, err := os.Open(path)
	if err != nil {
		return 0, time.Time{}, false
	}
	defer f.Close()
	buf := make([]byte, 4096)
	k, _ := f.ReadAt(buf, 0)
	h, hlen, err := wal.DecodeSegmentHeader(buf[:k])
	if err != nil || h.Version != wal.Version {
		return 0, time.Time{}, false
	}
	span := wal.Span(h, func(p []byte, off int64) (int, error) { return f.ReadAt(p, int64(hlen)+off) })
	if span == 0 {
		return 0, time.Time{}, true
	}
	return int64(hlen) + span, time.Unix(int64(h.Created), 0), true
}
