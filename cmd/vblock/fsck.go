package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/viperblock/viperblock-csi/pkg/units"
	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

var cmdFsck = &command{
	name: "fsck", args: "NAME", nargs: 1, json: true,
	summary: "verify a volume's manifest, its snapshots and every chunk they reference; --rebuild a lost or damaged manifest",
	detail: `Reads NAME's manifest, its snapshots' manifests and every chunk they reference (including
chunks of parent volumes, for a clone) from the store and checks:
  - each manifest's checksum, format, name, chunk table and extent map;
  - each chunk's header, index, footer and the CRC32C of every block;
  - that each extent points at blocks the chunk says belong to that place in the volume, written
    no later than the manifest's sequence high-water mark, and that live-block counts add up.
Chunks of NAME that no manifest references are reported but are not damage (an interrupted drain
leaves them; gc removes them). Exit status 3 if anything is corrupt, 1 if the check could not run.

With --rebuild, a manifest that is missing or does not decode is rebuilt from NAME's chunks (each
names the volume blocks it holds and the sequence number of each write; the newest copy of every
block wins), a clone's over its parent snapshot; the damaged manifest is kept as
NAME/manifest.broken-<time>, and the volume is checked again. A manifest that decodes is never
replaced, and a volume whose lease a live owner holds is refused (the lease must be released or
expire). Not recoverable: trims (a trimmed block may come back with its last written content),
whether a drain's last chunks were committed, the size past the last written block (--size), and
damaged snapshot manifests.`,
	flags: func(fs *flag.FlagSet, o *opts) {
		fs.IntVar(&o.threads, "parallel", 4, "chunks read at once")
		fs.BoolVar(&o.rebuild, "rebuild", false, "rebuild a missing or damaged manifest from the chunks, then check")
		fs.StringVar(&o.size, "size", "", "with --rebuild: the volume's size, if larger than up to its last written block")
	},
	run: runFsck,
}

// fsckJSON is fsck's JSON report (--json): the check's report, and the
// rebuild's with --rebuild. It is printed for a corrupt volume too, before
// the exit with status 3.
type fsckJSON struct {
	*vb.CheckReport
	OK      bool              `json:"ok"`
	Rebuild *vb.RebuildReport `json:"rebuild,omitempty"`
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
	if o.json {
		// The text goes nowhere; the report is printed at the end.
		e = &env{stdout: io.Discard, stderr: e.stderr, getenv: e.getenv, cmd: e.cmd, json: e.stdout}
	}
	var rebuilt *vb.RebuildReport
	if o.rebuild {
		if err := runRebuild(ctx, e, o, store, name, &rebuilt); err != nil {
			return err
		}
	}
	keys, err := o.keys()
	if err != nil {
		return err
	}
	rep, err := vb.Check(ctx, store, name, vb.CheckOptions{Parallel: o.threads, Keys: keys})
	if errors.Is(err, vb.ErrNotFound) {
		return volErr(name, o, vb.ErrNotFound)
	}
	if err != nil {
		return err
	}
	if m := rep.Manifest; m != nil {
		state := ""
		if m.Deleted {
			state = ", deleted: kept while snapshots or clones use its data"
		}
		e.printf("manifest: ok (size %s, epoch %d, %d extents, %d chunks, committed seq %d%s)\n",
			units.Format(m.Size), m.Epoch, m.Extents, m.Chunks, m.CommittedSeq, state)
	}
	if rep.Snapshots > 0 {
		e.printf("snapshots: %d manifest(s) checked\n", rep.Snapshots)
	}
	e.printf("chunks: %d of %d verified (%s read)\n", rep.ChunksVerified, rep.ChunksReferenced, units.Format(rep.BytesRead))
	if rep.Sealed > 0 {
		if rep.Authenticated == rep.Sealed {
			e.printf("encryption: %d sealed chunk(s), every authentication tag verified\n", rep.Sealed)
		} else {
			e.printf("encryption: %d sealed chunk(s), %d authenticated; pass --encryption-key-file to verify the tags of the rest (their checksums were verified)\n", rep.Sealed, rep.Authenticated)
		}
	}
	if rep.Orphans > 0 {
		e.printf("note: %d chunk object(s) of %s not referenced by any manifest (left by an interrupted drain or awaiting gc; not damage)\n", rep.Orphans, name)
	}
	if !rep.OK() {
		for _, p := range rep.Problems {
			e.printf("CORRUPT: %s\n", p)
		}
		if err := e.printJSON(fsckJSON{rep, false, rebuilt}); err != nil {
			return err
		}
		hint := ""
		if rep.Manifest == nil && !o.rebuild {
			hint = "; `vblock fsck --rebuild` rebuilds the manifest from the chunks"
		}
		return corruptError{fmt.Sprintf("volume %s: %d problem(s) found%s", name, len(rep.Problems), hint)}
	}
	e.printf("volume %s: ok\n", name)
	return e.printJSON(fsckJSON{rep, true, rebuilt})
}

// runRebuild rebuilds name's manifest if it is missing or damaged.
func runRebuild(ctx context.Context, e *env, o *opts, store backend.Store, name string, out **vb.RebuildReport) error {
	ro := vb.RebuildOptions{Logf: func(f string, a ...any) { e.note(f, a...) }}
	if o.size != "" {
		n, err := units.Parse(o.size)
		if err != nil {
			return usageError{fmt.Sprintf("--size %q: %v", o.size, err)}
		}
		ro.Size = n
	}
	rep, err := vb.Rebuild(ctx, store, name, ro)
	switch {
	case errors.Is(err, vb.ErrIntact):
		e.printf("rebuild: the manifest is intact; not rebuilt\n")
		return nil
	case errors.Is(err, vb.ErrInUse):
		return fmt.Errorf("volume %s: %w", name, err)
	case err != nil:
		return volErr(name, o, err)
	}
	*out = rep
	for _, s := range rep.Skipped {
		e.printf("rebuild: skipped %s\n", s)
	}
	if rep.KeptBroken != "" {
		e.printf("rebuild: the damaged manifest is kept as %s\n", rep.KeptBroken)
	}
	parent := ""
	if rep.Parent != "" {
		parent = ", clone of " + rep.Parent
	}
	e.printf("rebuild: manifest written from %d chunks (%d used): size %s, %d blocks mapped, epoch %d, seq %d, durability %s%s\n",
		rep.ChunksRead, rep.ChunksUsed, units.Format(rep.Size), rep.MappedBlocks, rep.Epoch, rep.CommittedSeq, rep.Durability, parent)
	return nil
}
