package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/viperblock/viperblock-csi/pkg/units"
	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/chunk"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/manifest"
)

var cmdFsck = &command{
	name: "fsck", args: "NAME", nargs: 1,
	summary: "verify a volume's manifest, its snapshots and every chunk they reference",
	detail: `Reads NAME's manifest, its snapshots' manifests and every chunk they reference (including
chunks of parent volumes, for a clone) from the store and checks:
  - each manifest's checksum, format, name, chunk table and extent map;
  - each chunk's header, index, footer and the CRC32C of every block;
  - that each extent points at blocks the chunk says belong to that place in the volume, written
    no later than the manifest's sequence high-water mark, and that live-block counts add up.
Chunks of NAME that no manifest references are reported but are not damage (an interrupted drain
leaves them; gc removes them). Exit status 3 if anything is corrupt, 1 if the check could not run.`,
	flags: func(fs *flag.FlagSet, o *opts) {
		fs.IntVar(&o.threads, "parallel", 4, "chunks read at once")
	},
	run: runFsck,
}

// fsckReport collects problems.
type fsckReport struct {
	mu       sync.Mutex
	problems []string
}

func (r *fsckReport) add(format string, a ...any) {
	r.mu.Lock()
	r.problems = append(r.problems, fmt.Sprintf(format, a...))
	r.mu.Unlock()
}

// chunkCheck is one chunk object to verify and what manifests claim of it.
type chunkCheck struct {
	key    string
	volume string // the volume that wrote it
	id     uint64
	blocks uint32
	claims []claim
}

// claim: manifest `from` maps volume blocks [start, start+count) to chunk
// blocks from off; own says the chunk is the manifest volume's own, so its
// sequence numbers are bounded by seqHW.
type claim struct {
	from              string
	start, off, count uint64
	own               bool
	seqHW             uint64
}

func runFsck(ctx context.Context, e *env, o *opts, args []string) error {
	name := args[0]
	store, err := openStore(ctx, o)
	if err != nil {
		return err
	}
	defer store.Close()
	if err := backend.ValidateName(name); err != nil {
		return volErr(name, o, fmt.Errorf("%w: %v", vb.ErrInvalidName, err))
	}
	rep := &fsckReport{}
	chunks := map[string]*chunkCheck{}
	referenced := map[uint64]bool{} // own chunk ids referenced by any manifest

	// checkManifest decodes one manifest and records its chunk claims.
	checkManifest := func(key, what string) (*manifest.Manifest, error) {
		raw, _, err := store.Get(ctx, key)
		if err != nil {
			return nil, err
		}
		m, err := manifest.Decode(raw)
		if err != nil {
			rep.add("%s: manifest is corrupt: %v", what, err)
			return nil, nil
		}
		if m.Name != name {
			rep.add("%s: manifest names volume %q", what, m.Name)
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
				rep.add("%s: chunk %016x: manifest counts %d live blocks, its extents reference %d", what, c.ID, c.Live, live[k])
			}
			if int(c.Vol) > len(m.Refs) {
				rep.add("%s: chunk %016x: volume index %d outside the volume table", what, c.ID, c.Vol)
				continue
			}
			vol := m.VolumeName(c.Vol)
			ck := fmt.Sprintf("%s/chunks/%016x", vol, c.ID)
			cc := chunks[ck]
			if cc == nil {
				cc = &chunkCheck{key: ck, volume: vol, id: c.ID, blocks: c.Blocks}
				chunks[ck] = cc
			} else if cc.blocks != c.Blocks {
				rep.add("%s: chunk %s: %d blocks here, %d in another manifest", what, ck, c.Blocks, cc.blocks)
			}
			if c.Vol == 0 {
				referenced[c.ID] = true
			}
		}
		for _, x := range m.Extents {
			k := [2]uint64{uint64(x.Vol), x.Chunk}
			if !table[k] {
				rep.add("%s: extent at block %d references chunk %016x, which is not in the chunk table", what, x.Start, x.Chunk)
				continue
			}
			ck := fmt.Sprintf("%s/chunks/%016x", m.VolumeName(x.Vol), x.Chunk)
			chunks[ck].claims = append(chunks[ck].claims, claim{what, x.Start, uint64(x.Off), uint64(x.Count), x.Vol == 0, m.SeqHW})
		}
		return m, nil
	}

	m, err := checkManifest(name+"/manifest", "manifest")
	if errors.Is(err, backend.ErrNotFound) {
		return volErr(name, o, vb.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("read manifest: %w", err)
	}
	if m != nil {
		state := ""
		if m.Flags&manifest.FlagDeleted != 0 {
			state = ", deleted: kept while snapshots or clones use its data"
		}
		e.printf("manifest: ok (size %s, epoch %d, %d extents, %d chunks, committed seq %d%s)\n",
			units.Format(m.Size), m.Epoch, len(m.Extents), len(m.Chunks), m.SeqHW, state)
	}
	snapKeys, err := store.List(ctx, name+"/snapshots/")
	if err != nil {
		return fmt.Errorf("list snapshots: %w", err)
	}
	for _, k := range snapKeys {
		what := "snapshot " + strings.TrimPrefix(k, name+"/snapshots/")
		if _, err := checkManifest(k, what); err != nil && !errors.Is(err, backend.ErrNotFound) {
			return fmt.Errorf("read %s: %w", what, err)
		}
	}
	if len(snapKeys) > 0 {
		e.printf("snapshots: %d manifest(s) checked\n", len(snapKeys))
	}

	var mu sync.Mutex
	var checked, bytes int64
	work := make(chan *chunkCheck)
	var wg sync.WaitGroup
	for range max(o.threads, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range work {
				if n := verifyChunk(ctx, store, c, rep); n > 0 {
					mu.Lock()
					checked++
					bytes += n
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
		return err
	}
	e.printf("chunks: %d of %d verified (%s read)\n", checked, len(chunks), units.Format(bytes))

	own, err := store.List(ctx, name+"/chunks/")
	if err != nil {
		return fmt.Errorf("list chunks: %w", err)
	}
	orphans := 0
	for _, k := range own {
		if len(rep.problems) > 0 {
			break // with a damaged manifest every chunk would look unreferenced
		}
		id, err := strconv.ParseUint(k[strings.LastIndexByte(k, '/')+1:], 16, 64)
		if err != nil || !referenced[id] {
			orphans++
		}
	}
	if orphans > 0 {
		e.printf("note: %d chunk object(s) of %s not referenced by any manifest (left by an interrupted drain or awaiting gc; not damage)\n", orphans, name)
	}
	if len(rep.problems) > 0 {
		sort.Strings(rep.problems)
		for _, p := range rep.problems {
			e.printf("CORRUPT: %s\n", p)
		}
		return corruptError{fmt.Sprintf("volume %s: %d problem(s) found", name, len(rep.problems))}
	}
	e.printf("volume %s: ok\n", name)
	return nil
}

// verifyChunk reads and checks one chunk against the claims on it and
// returns its size (0 if it could not be read).
func verifyChunk(ctx context.Context, store backend.Store, c *chunkCheck, rep *fsckReport) int64 {
	b, _, err := store.Get(ctx, c.key)
	if errors.Is(err, backend.ErrNotFound) {
		rep.add("chunk %s: missing from the store", c.key)
		return 0
	}
	if err != nil {
		rep.add("chunk %s: cannot read: %v", c.key, err)
		return 0
	}
	h, idx, err := chunk.Decode(b)
	if err != nil {
		rep.add("chunk %s: %v", c.key, err)
		return 0
	}
	if h.ID != c.id || h.Volume != c.volume {
		rep.add("chunk %s: header names chunk %016x of volume %q", c.key, h.ID, h.Volume)
	}
	if h.Count != int(c.blocks) {
		rep.add("chunk %s: holds %d blocks, the manifest says %d", c.key, h.Count, c.blocks)
	}
	for _, cl := range c.claims {
		for i := uint64(0); i < cl.count; i++ {
			j := cl.off + i
			if j >= uint64(len(idx)) {
				rep.add("%s: extent at block %d reaches past the end of chunk %s", cl.from, cl.start, c.key)
				break
			}
			if idx[j].Block != cl.start+i {
				rep.add("%s: chunk %s block %d holds volume block %d, the manifest maps it to block %d", cl.from, c.key, j, idx[j].Block, cl.start+i)
				break
			}
			if cl.own && idx[j].Seq > cl.seqHW {
				rep.add("%s: chunk %s: block %d was written at seq %d, after the manifest's high-water mark %d", cl.from, c.key, idx[j].Block, idx[j].Seq, cl.seqHW)
				break
			}
		}
	}
	return int64(len(b))
}
