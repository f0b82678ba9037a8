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
)

// WALState is what a volume's WAL on this node holds that the store may not
// have yet. The engine deletes a segment once everything in it is in the
// store, so every byte of the segments counts as pending. A stale WAL set
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
			size, born, err := fileSizeBirth(filepath.Join(shard, e.Name()))
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				return ws, err
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
