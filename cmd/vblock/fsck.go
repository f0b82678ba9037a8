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
	summary: "verify a volume's manifest and every chunk it references",
	detail: `Reads NAME's manifest and every chunk it references from the store and checks:
  - the manifest's checksum, format, name and extent map;
  - each chunk's header, index, footer and the CRC32C of every block;
  - that each extent points at blocks the chunk says belong to that place in the volume, written
    no later than the manifest's sequence high-water mark, and that live-block counts add up.
Chunks in the store that the manifest does not reference are reported but are not damage (an
interrupted drain leaves them). Exit status 3 if anything is corrupt, 1 if the check could not run.`,
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

func runFsck(ctx context.Context, e *env, o *opts, args []string) error {
	name := args[0]
	store, err := openStore(ctx, o)
	if err != nil {
		return err
	}
	defer store.Close()
	if err := backend.ValidateName(name); err != nil {
		return usagef("invalid volume name %q", name)
	}
	raw, _, err := store.Get(ctx, name+"/manifest")
	if errors.Is(err, backend.ErrNotFound) {
		return volErr(name, o, vb.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("read manifest: %w", err)
	}
	m, err := manifest.Decode(raw)
	if err != nil {
		return corruptError{fmt.Sprintf("volume %s: manifest is corrupt: %v", name, err)}
	}
	rep := &fsckReport{}
	if m.Name != name {
		rep.add("manifest under %s names volume %q", name, m.Name)
	}
	e.printf("manifest: ok (size %s, epoch %d, %d extents, %d chunks, committed seq %d)\n",
		units.Format(m.Size), m.Epoch, len(m.Extents), len(m.Chunks), m.SeqHW)

	// Which blocks of which chunk each extent claims, to check against the
	// chunk's own index.
	type claim struct{ start, off, count uint64 }
	claims := map[uint64][]claim{}
	live := map[uint64]uint64{}
	for _, x := range m.Extents {
		claims[x.Chunk] = append(claims[x.Chunk], claim{x.Start, uint64(x.Off), uint64(x.Count)})
		live[x.Chunk] += uint64(x.Count)
	}

	var mu sync.Mutex
	var checked, bytes int64
	work := make(chan manifest.Chunk)
	var wg sync.WaitGroup
	par := max(o.threads, 1)
	for range par {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range work {
				key := fmt.Sprintf("%s/chunks/%016x", name, c.ID)
				b, _, err := store.Get(ctx, key)
				if errors.Is(err, backend.ErrNotFound) {
					rep.add("chunk %016x: missing from the store", c.ID)
					continue
				}
				if err != nil {
					rep.add("chunk %016x: cannot read: %v", c.ID, err)
					continue
				}
				h, idx, err := chunk.Decode(b)
				if err != nil {
					rep.add("chunk %016x: %v", c.ID, err)
					continue
				}
				if h.ID != c.ID || h.Volume != name {
					rep.add("chunk %016x: header names chunk %016x of volume %q", c.ID, h.ID, h.Volume)
				}
				if h.Count != int(c.Blocks) {
					rep.add("chunk %016x: holds %d blocks, manifest says %d", c.ID, h.Count, c.Blocks)
				}
				for _, cl := range claims[c.ID] {
					for i := uint64(0); i < cl.count; i++ {
						j := cl.off + i
						if j >= uint64(len(idx)) {
							rep.add("chunk %016x: extent at block %d reaches past the chunk", c.ID, cl.start)
							break
						}
						if idx[j].Block != cl.start+i {
							rep.add("chunk %016x: block index %d holds volume block %d, manifest maps it to block %d", c.ID, j, idx[j].Block, cl.start+i)
							break
						}
						if idx[j].Seq > m.SeqHW {
							rep.add("chunk %016x: block %d was written at seq %d, after the manifest's high-water mark %d", c.ID, idx[j].Block, idx[j].Seq, m.SeqHW)
							break
						}
					}
				}
				mu.Lock()
				checked++
				bytes += int64(len(b))
				mu.Unlock()
			}
		}()
	}
	for _, c := range m.Chunks {
		if uint64(c.Live) != live[c.ID] {
			rep.add("chunk %016x: manifest counts %d live blocks, its extents reference %d", c.ID, c.Live, live[c.ID])
		}
		select {
		case work <- c:
		case <-ctx.Done():
		}
	}
	close(work)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return err
	}
	for id := range claims {
		if !hasChunk(m.Chunks, id) {
			rep.add("extents reference chunk %016x, which is not in the chunk table", id)
		}
	}
	e.printf("chunks: %d of %d verified (%s read)\n", checked, len(m.Chunks), units.Format(bytes))

	keys, err := store.List(ctx, name+"/chunks/")
	if err != nil {
		return fmt.Errorf("list chunks: %w", err)
	}
	var orphans int
	for _, k := range keys {
		id, err := strconv.ParseUint(k[strings.LastIndexByte(k, '/')+1:], 16, 64)
		if err != nil || !hasChunk(m.Chunks, id) {
			orphans++
		}
	}
	if orphans > 0 {
		e.printf("note: %d chunk object(s) not referenced by the manifest (left by an interrupted drain or awaiting cleanup; not damage)\n", orphans)
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

func hasChunk(cs []manifest.Chunk, id uint64) bool {
	i := sort.Search(len(cs), func(i int) bool { return cs[i].ID >= id })
	return i < len(cs) && cs[i].ID == id
}
