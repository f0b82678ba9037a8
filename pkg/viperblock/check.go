package viperblock

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/chunk"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/manifest"
)

// CheckOptions tune Check.
type CheckOptions struct {
	// Parallel is how many chunks are read at once (default 4).
	Parallel int
	// Keys, for an encrypted volume, unwraps its data keys so that every
	// sealed extent is opened and its authentication tag verified. Without
	// it the stored checksums of sealed chunks are verified, not their
	// tags. A key that does not unwrap the volume's keys fails the check
	// with ErrKey.
	Keys KeySource
}

// CheckReport is what Check found. Problems lists the damage, one sentence
// each, sorted; a volume without problems is intact.
type CheckReport struct {
	Volume string `json:"volume"`
	// Manifest describes the volume's manifest; nil when it is corrupt.
	Manifest *ManifestSummary `json:"manifest,omitempty"`
	// Snapshots is the number of snapshot manifests checked.
	Snapshots int `json:"snapshots"`
	// ChunksVerified of ChunksReferenced were read and verified in full
	// (BytesRead bytes).
	ChunksReferenced int   `json:"chunks_referenced"`
	ChunksVerified   int   `json:"chunks_verified"`
	BytesRead        int64 `json:"bytes_read"`
	// Orphans counts the volume's chunk objects no manifest references
	// (an interrupted drain leaves them; gc removes them): not damage.
	// Not counted when a manifest is damaged (every chunk would look
	// unreferenced).
	Orphans int `json:"orphans"`
	// Sealed counts the verified chunks that are encrypted; Authenticated
	// those of them whose every extent was opened with the data key
	// (authentication tags verified).
	Sealed        int      `json:"sealed_chunks,omitempty"`
	Authenticated int      `json:"authenticated_chunks,omitempty"`
	Problems      []string `json:"problems,omitempty"`
}

// OK reports whether the check found no damage.
func (r *CheckReport) OK() bool { return len(r.Problems) == 0 }

// ManifestSummary describes a manifest that decoded.
type ManifestSummary struct {
	Size         int64  `json:"size"`
	Epoch        uint64 `json:"epoch"`
	Extents      int    `json:"extents"`
	Chunks       int    `json:"chunks"`
	CommittedSeq uint64 `json:"committed_seq"`
	// Deleted: a tombstone, kept while snapshots or clones use its data.
	Deleted bool `json:"deleted,omitempty"`
}

// checker collects problems.
type checker struct {
	mu       sync.Mutex
	problems []string
}

func (c *checker) add(format string, a ...any) {
	c.mu.Lock()
	c.problems = append(c.problems, fmt.Sprintf(format, a...))
	c.mu.Unlock()
}

// chunkCheck is one chunk object to verify and what manifests claim of it.
type chunkCheck struct {
	key    string
	volume string // the volume that wrote it
	id     uint64
	blocks uint32
	claims []chunkClaim
}

// chunkClaim: manifest `from` maps volume blocks [start, start+count) to
// chunk blocks from off; own says the chunk is the manifest volume's own, so
// its sequence numbers are bounded by seqHW.
type chunkClaim struct {
	from              string
	start, off, count uint64
	own               bool
	seqHW             uint64
}

// Check verifies a volume in the store: its manifest, its snapshots'
// manifests and every chunk they reference (chunks of parent volumes too,
// for a clone), reading each chunk in full:
//   - each manifest's checksum, format, name, chunk table and extent map;
//   - each chunk's header, index, footer and the CRC32C of every block;
//   - that each extent points at blocks the chunk says belong to that place
//     in the volume, written no later than the manifest's sequence
//     high-water mark, and that live-block counts add up.
//
// Damage is reported in the CheckReport, not as an error. The error is
// ErrNotFound when the volume has no manifest, or the store's error when
// the check could not run.
func Check(ctx context.Context, store backend.Store, name string, opts CheckOptions) (*CheckReport, error) {
	if err := validName(name); err != nil {
		return nil, err
	}
	rep := &CheckReport{Volume: name}
	ck := &checker{}
	chunks := map[string]*chunkCheck{}
	referenced := map[uint64]bool{} // own chunk ids referenced by any manifest
	wrapped := &manifest.Manifest{Name: name}

	// checkManifest decodes one manifest and records its chunk claims.
	checkManifest := func(key, what string) (*manifest.Manifest, error) {
		raw, _, err := store.Get(ctx, key)
		if err != nil {
			return nil, err
		}
		m, err := manifest.Decode(raw)
		if err != nil {
			ck.add("%s: manifest is corrupt: %v", what, err)
			return nil, nil
		}
		if m.Name != name {
			ck.add("%s: manifest names volume %q", what, m.Name)
		}
		for _, k := range m.Keys {
			if _, ok := wrapped.Key(k.ID); !ok {
				wrapped.AddKey(k)
			}
		}
		live := map[[2]uint64]uint64{}
		for _, x := range m.Extents {
			live[[2]uint64{uint64(x.Vol), x.Chunk}] += uint64(x.Count)
		}
		table := map[[2]uint64]bool{}
		for _, c := range m.Chunks {
			k := [2]uint64{uint64(c.Vol), c.ID}
			table[k] = true
			if uint64(c.Live) != live[k] {
				ck.add("%s: chunk %016x: manifest counts %d live blocks, its extents reference %d", what, c.ID, c.Live, live[k])
			}
			if int(c.Vol) > len(m.Refs) {
				ck.add("%s: chunk %016x: volume index %d outside the volume table", what, c.ID, c.Vol)
				continue
			}
			vol := m.VolumeName(c.Vol)
			key := chunkKey(vol, c.ID)
			cc := chunks[key]
			if cc == nil {
				cc = &chunkCheck{key: key, volume: vol, id: c.ID, blocks: c.Blocks}
				chunks[key] = cc
			} else if cc.blocks != c.Blocks {
				ck.add("%s: chunk %s: %d blocks here, %d in another manifest", what, key, c.Blocks, cc.blocks)
			}
			if c.Vol == 0 {
				referenced[c.ID] = true
			}
		}
		for _, x := range m.Extents {
			k := [2]uint64{uint64(x.Vol), x.Chunk}
			if !table[k] {
				ck.add("%s: extent at block %d references chunk %016x, which is not in the chunk table", what, x.Start, x.Chunk)
				continue
			}
			key := chunkKey(m.VolumeName(x.Vol), x.Chunk)
			chunks[key].claims = append(chunks[key].claims, chunkClaim{what, x.Start, uint64(x.Off), uint64(x.Count), x.Vol == 0, m.SeqHW})
		}
		return m, nil
	}

	m, err := checkManifest(manifestKey(name), "manifest")
	if errors.Is(err, backend.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	if err != nil {
		return nil, fmt.Errorf("viperblock: check %s: read manifest: %w", name, err)
	}
	if m != nil {
		rep.Manifest = &ManifestSummary{Size: m.Size, Epoch: m.Epoch, Extents: len(m.Extents), Chunks: len(m.Chunks),
			CommittedSeq: m.SeqHW, Deleted: m.Flags&manifest.FlagDeleted != 0}
	}
	snapKeys, err := store.List(ctx, name+"/snapshots/")
	if err != nil {
		return nil, fmt.Errorf("viperblock: check %s: list snapshots: %w", name, err)
	}
	for _, k := range snapKeys {
		what := "snapshot " + strings.TrimPrefix(k, name+"/snapshots/")
		if _, err := checkManifest(k, what); err != nil && !errors.Is(err, backend.ErrNotFound) {
			return nil, fmt.Errorf("viperblock: check %s: read %s: %w", name, what, err)
		}
		rep.Snapshots++
	}

	var kr *keyring
	if opts.Keys != nil && len(wrapped.Keys) > 0 {
		var err error
		if kr, err = unlock(ctx, wrapped, opts.Keys); err != nil {
			return nil, err
		}
	}
	var mu sync.Mutex
	work := make(chan *chunkCheck)
	var wg sync.WaitGroup
	for range max(opts.Parallel, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range work {
				if n, sealed, auth := verifyChunk(ctx, store, c, ck, kr); n > 0 {
					mu.Lock()
					rep.ChunksVerified++
					rep.BytesRead += n
					if sealed {
						rep.Sealed++
					}
					if auth {
						rep.Authenticated++
					}
					mu.Unlock()
				}
			}
		}()
	}
	keys := make([]string, 0, len(chunks))
	for k := range chunks {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	rep.ChunksReferenced = len(keys)
feed:
	for _, k := range keys {
		select {
		case work <- chunks[k]:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	if len(ck.problems) == 0 {
		own, err := store.List(ctx, name+"/chunks/")
		if err != nil {
			return nil, fmt.Errorf("viperblock: check %s: list chunks: %w", name, err)
		}
		for _, k := range own {
			id, err := strconv.ParseUint(k[strings.LastIndexByte(k, '/')+1:], 16, 64)
			if err != nil || !referenced[id] {
				rep.Orphans++
			}
		}
	}
	sort.Strings(ck.problems)
	rep.Problems = ck.problems
	return rep, nil
}

// verifyChunk reads and checks one chunk against the claims on it and
// returns its size (0 if it could not be read), whether it is sealed and
// whether its tags were verified.
func verifyChunk(ctx context.Context, store backend.Store, c *chunkCheck, ck *checker, kr *keyring) (int64, bool, bool) {
	b, _, err := store.Get(ctx, c.key)
	if errors.Is(err, backend.ErrNotFound) {
		ck.add("chunk %s: missing from the store", c.key)
		return 0, false, false
	}
	if err != nil {
		ck.add("chunk %s: cannot read: %v", c.key, err)
		return 0, false, false
	}
	var h chunk.Header
	var idx []chunk.Entry
	sealed, auth := false, false
	if hh, herr := chunk.DecodeHeader(b); herr == nil && hh.Version == chunk.Version2 {
		sealed = hh.Sealed
		var ix *chunk.Index
		if sealed && kr.chunkKey(hh.KeyID) == nil {
			// No key: the structure and the stored checksums only.
			if int64(len(b)) != hh.Size {
				err = fmt.Errorf("%w: chunk is %d bytes, header says %d", chunk.ErrCorrupt, len(b), hh.Size)
			} else if ix, err = chunk.DecodeIndex2(b[chunk.HeaderSize:chunk.HeaderSize+chunk.IndexLen2(hh.Count, hh.ExtentBlocks)], hh); err == nil {
				err = chunk.VerifyStored(b, ix)
			}
			if err == nil && kr != nil {
				err = fmt.Errorf("sealed with data key %016x, which no manifest of the volume holds", hh.KeyID)
			}
		} else {
			ix, _, err = chunk.Decode2(b, kr.chunkKey(hh.KeyID))
			auth = sealed && err == nil
		}
		if ix != nil {
			h, idx = ix.Header, ix.Entries
		}
	} else {
		h, idx, err = chunk.Decode(b)
	}
	if err != nil {
		ck.add("chunk %s: %v", c.key, err)
		return 0, sealed, false
	}
	if h.ID != c.id || h.Volume != c.volume {
		ck.add("chunk %s: header names chunk %016x of volume %q", c.key, h.ID, h.Volume)
	}
	if h.Count != int(c.blocks) {
		ck.add("chunk %s: holds %d blocks, the manifest says %d", c.key, h.Count, c.blocks)
	}
	for _, cl := range c.claims {
		for i := uint64(0); i < cl.count; i++ {
			j := cl.off + i
			if j >= uint64(len(idx)) {
				ck.add("%s: extent at block %d reaches past the end of chunk %s", cl.from, cl.start, c.key)
				break
			}
			if idx[j].Block != cl.start+i {
				ck.add("%s: chunk %s block %d holds volume block %d, the manifest maps it to block %d", cl.from, c.key, j, idx[j].Block, cl.start+i)
				break
			}
			if cl.own && idx[j].Seq > cl.seqHW {
				ck.add("%s: chunk %s: block %d was written at seq %d, after the manifest's high-water mark %d", cl.from, c.key, idx[j].Block, idx[j].Seq, cl.seqHW)
				break
			}
		}
	}
	return int64(len(b)), sealed, auth
}
