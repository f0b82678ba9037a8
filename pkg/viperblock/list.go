package viperblock

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/manifest"
)

// Listing volumes.
//
// The volumes of a store are the first segments of its keys that hold a
// manifest (<volume>/manifest). They are found with one listing of the
// top level of the key hierarchy (backend.ListDirs: S3's delimiter, a
// directory read on the file store), never by listing every key, so the
// cost of a listing grows with the number of volumes, not with the number
// of their chunks. Every bucket written by any version of the engine is
// laid out this way, so nothing needs migrating. Each volume's manifest is
// then read (one request each, listConcurrency at a time); a volume whose
// manifest is damaged or unreadable is reported for that volume alone.

// listConcurrency is how many manifests a listing reads at once.
const listConcurrency = 16

// VolumeEntry is one volume found by ListVolumes.
type VolumeEntry struct {
	Name string
	// Info is the volume's state as Stat reports it (no snapshots or
	// dependants); zero when Err is set.
	Info Info
	// Err is why the volume's manifest could not be read: ErrCorrupt for
	// a damaged manifest (see Check and Rebuild), or the store's error.
	Err error
}

// ListVolumes lists the volumes of a store, sorted by name, each with its
// state or the error that kept it from being read. Deleted volumes (kept
// as tombstones while snapshots or clones use their data) and top-level
// names that hold no manifest are left out. Only a failure to list the
// store fails the whole call.
func ListVolumes(ctx context.Context, store backend.Store) ([]VolumeEntry, error) {
	return ListVolumesFrom(ctx, store, "", 0)
}

// ListVolumesFrom lists, as ListVolumes does, the volumes whose names sort
// after after, and at most limit of them (0: all): a page of a listing
// reads the manifests of that page, not of every volume.
func ListVolumesFrom(ctx context.Context, store backend.Store, after string, limit int) ([]VolumeEntry, error) {
	dirs, err := backend.ListDirs(ctx, store, "")
	if err != nil {
		return nil, err
	}
	var names []string
	for _, d := range dirs {
		if d > after && validName(d) == nil {
			names = append(names, d)
		}
	}
	var res []VolumeEntry
	for len(names) > 0 && (limit <= 0 || len(res) < limit) {
		batch := names
		if limit > 0 {
			batch = names[:min(len(names), max(limit-len(res), listConcurrency))]
		}
		names = names[len(batch):]
		got, err := readEntries(ctx, store, batch)
		if err != nil {
			return nil, err
		}
		res = append(res, got...)
	}
	if limit > 0 && len(res) > limit {
		res = res[:limit]
	}
	return res, nil
}

// readEntries reads the manifests of names, listConcurrency at a time, and
// returns the entries of those that are volumes, in the order of names.
func readEntries(ctx context.Context, store backend.Store, names []string) ([]VolumeEntry, error) {
	out := make([]VolumeEntry, len(names))
	keep := make([]bool, len(names))
	sem := make(chan struct{}, listConcurrency)
	var wg sync.WaitGroup
	for i, n := range names {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			m, _, err := readManifest(ctx, store, n)
			switch {
			case errors.Is(err, ErrNotFound):
				// Not a volume (another tool's records), or one whose
				// removal deleted its manifest and not yet the rest.
			case err != nil:
				out[i], keep[i] = VolumeEntry{Name: n, Err: err}, true
			case m.Flags&manifest.FlagDeleted == 0:
				out[i], keep[i] = VolumeEntry{Name: n, Info: infoOf(m)}, true
			}
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var res []VolumeEntry
	for i := range out {
		if keep[i] {
			res = append(res, out[i])
		}
	}
	return res, nil
}

// List returns the names of the volumes in a store, sorted, including those
// whose manifest is damaged or could not be read (Stat or Inspect on such a
// name reports why); see ListVolumes.
func List(ctx context.Context, store backend.Store) ([]string, error) {
	vols, err := ListVolumes(ctx, store)
	if err != nil {
		return nil, err
	}
	names := make([]string, len(vols))
	for i, v := range vols {
		names[i] = v.Name
	}
	return names, nil
}

// Stat reads a volume's own committed state, its manifest, in one request:
// size, epoch, parent, durability class, whether it is open, how much it
// stores. Snapshots and Dependants are left empty (Inspect fills them). A
// deleted volume is ErrNotFound; a damaged manifest ErrCorrupt.
func Stat(ctx context.Context, store backend.Store, name string) (Info, error) {
	m, _, err := readLiveManifest(ctx, store, name)
	if err != nil {
		return Info{}, err
	}
	return infoOf(m), nil
}

// infoOf describes a manifest.
func infoOf(m *manifest.Manifest) Info {
	inf := Info{Name: m.Name, Size: m.Size, Extents: len(m.Extents), Chunks: len(m.Chunks), Epoch: m.Epoch, Parent: m.Parent,
		CommittedSeq: m.SeqHW, Open: m.Flags&manifest.FlagOpen != 0, Committed: time.Unix(0, m.Committed), Durability: DurabilityNode}
	if m.Flags&manifest.FlagDurableStore != 0 {
		inf.Durability = DurabilityStore
	}
	inf.Encrypted, inf.Compression = m.Encrypted(), compressionName(m.Compression)
	if k, ok := m.Key(m.WriteKey); ok {
		inf.KEKID = k.KEKID
	}
	for _, e := range m.Extents {
		inf.WrittenBytes += int64(e.Count) * BlockSize
	}
	for _, c := range m.Chunks {
		inf.ChunkBytes += int64(c.Blocks) * BlockSize
	}
	return inf
}
