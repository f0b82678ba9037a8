package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/units"
	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
)

var cmdSnapshot = &command{
	name: "snapshot", args: "create|list|delete|diff VOLUME [SNAPSHOT [SNAPSHOT2]]", nargs: -1, json: true,
	words:   []string{"create", "list", "delete", "diff"},
	summary: "create, list, delete or compare snapshots",
	detail: `snapshot create VOLUME SNAPSHOT   freeze VOLUME's current state (no data is copied); if a
                                   server has VOLUME open, it is asked to upload what it holds first
snapshot list VOLUME              list VOLUME's snapshots
snapshot delete VOLUME SNAPSHOT   delete a snapshot (kept hidden while clones still use its data)
snapshot diff VOLUME SNAP1 SNAP2  list the block ranges that differ between two snapshots`,
	flags: func(fs *flag.FlagSet, o *opts) {
		fs.StringVar(&o.drainInterval, "owner-wait", "30s", "how long create waits for a server that has the volume open to upload its data")
	},
	run: func(ctx context.Context, e *env, o *opts, args []string) error {
		if len(args) < 2 {
			return usagef("expected a subcommand and a volume (see 'vblock snapshot --help')")
		}
		want := map[string]int{"create": 3, "list": 2, "delete": 3, "diff": 4}
		n, ok := want[args[0]]
		if !ok {
			return usagef("unknown snapshot subcommand %q (create, list, delete, diff)", args[0])
		}
		if len(args) != n {
			return usagef("snapshot %s takes %d argument(s)", args[0], n-1)
		}
		store, err := openStore(ctx, o)
		if err != nil {
			return err
		}
		defer store.Close()
		vol := args[1]
		switch args[0] {
		case "create":
			wait, err := time.ParseDuration(o.drainInterval)
			if err != nil || wait < 0 {
				return usagef("--owner-wait: %q is not a duration", o.drainInterval)
			}
			inf, err := vb.CreateSnapshot(ctx, store, vol, args[2], vb.SnapshotOptions{OwnerWait: wait,
				Logf: func(f string, a ...any) { e.note(f, a...) }})
			if err != nil {
				return snapErr(vol, args[2], o, err)
			}
			if o.json {
				return printJSON(e, inf)
			}
			e.printf("snapshot %s@%s: %s written of %s\n", vol, inf.Name, units.Format(inf.WrittenBytes), units.Format(inf.Size))
		case "list":
			snaps, err := vb.ListSnapshots(ctx, store, vol)
			if err != nil {
				return volErr(vol, o, err)
			}
			if o.json {
				return printJSON(e, snaps)
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "NAME\tSIZE\tWRITTEN\tCREATED\tCLONES\n")
			for _, s := range snaps {
				deps, err := vb.Dependants(ctx, store, vol, s.Name)
				if err != nil {
					return err
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.Name, units.Format(s.Size), units.Format(s.WrittenBytes),
					s.Created.UTC().Format(time.RFC3339), strings.Join(deps, ","))
			}
			return tw.Flush()
		case "delete":
			deps, err := vb.Dependants(ctx, store, vol, args[2])
			if err != nil {
				return err
			}
			if err := vb.DeleteSnapshot(ctx, store, vol, args[2]); err != nil {
				return snapErr(vol, args[2], o, err)
			}
			if o.json {
				if deps == nil {
					deps = []string{}
				}
				return printJSON(e, snapshotDeleteReport{Volume: vol, Snapshot: args[2], Deleted: true, Dependants: deps})
			}
			if len(deps) > 0 {
				e.printf("deleted snapshot %s@%s; its data stays while clones use it: %s\n", vol, args[2], strings.Join(deps, ", "))
			} else {
				e.printf("deleted snapshot %s@%s\n", vol, args[2])
			}
		case "diff":
			ranges, err := vb.ChangedBlocks(ctx, store, vol, args[2], args[3])
			if err != nil {
				return snapErr(vol, args[2]+"|"+args[3], o, err)
			}
			var total uint64
			rep := snapshotDiffReport{Volume: vol, From: args[2], To: args[3], Ranges: []byteRange{}}
			for _, r := range ranges {
				if !o.json {
					e.printf("%d\t%d\n", r[0]*vb.BlockSize, r[1]*vb.BlockSize)
				}
				rep.Ranges = append(rep.Ranges, byteRange{Offset: r[0] * vb.BlockSize, Length: r[1] * vb.BlockSize})
				total += r[1]
			}
			if o.json {
				rep.Bytes = total * vb.BlockSize
				if err := printJSON(e, rep); err != nil {
					return err
				}
			}
			e.note("%d ranges, %s differ", len(ranges), units.Format(int64(total)*vb.BlockSize))
		}
		return nil
	},
}

// The JSON reports of snapshot delete and diff (create prints the
// snapshot's vb.SnapshotInfo, list a JSON array of them).
type (
	snapshotDeleteReport struct {
		Volume, Snapshot string
		Deleted          bool
		Dependants       []string // clones that keep the snapshot's data
	}
	snapshotDiffReport struct {
		Volume, From, To string
		Ranges           []byteRange
		Bytes            uint64 // total length of Ranges
	}
	byteRange struct{ Offset, Length uint64 }
)

func snapErr(vol, snap string, o *opts, err error) error {
	switch {
	case errors.Is(err, vb.ErrNotFound):
		return fmt.Errorf("%s: %w", vol+"@"+snap, errors.Unwrap(err))
	case errors.Is(err, vb.ErrExists):
		return errors.New(strings.TrimPrefix(err.Error(), "viperblock: "))
	}
	return volErr(vol, o, err)
}

var cmdClone = &command{
	name: "clone", args: "SOURCE NEW", nargs: 2, json: true,
	summary: "make a copy-on-write clone of a snapshot or a volume",
	detail: `Creates volume NEW sharing SOURCE's data; only blocks NEW writes are stored for it. SOURCE is
VOLUME@SNAPSHOT, or a VOLUME (its current state is snapshotted implicitly). Instant at any size.`,
	flags: func(fs *flag.FlagSet, o *opts) {
		fs.StringVar(&o.size, "size", "", "size of the clone (default: the source's; may only be larger)")
	},
	run: func(ctx context.Context, e *env, o *opts, args []string) error {
		var size int64
		if o.size != "" {
			s, err := parseSize(o.size)
			if err != nil {
				return err
			}
			size = s
		}
		store, err := openStore(ctx, o)
		if err != nil {
			return err
		}
		defer store.Close()
		src, snap, isSnap := strings.Cut(args[0], "@")
		if isSnap {
			err = vb.Clone(ctx, store, src, snap, args[1], size)
		} else {
			err = vb.CloneVolume(ctx, store, src, args[1], size, vb.SnapshotOptions{Logf: func(f string, a ...any) { e.note(f, a...) }})
		}
		if err != nil {
			if errors.Is(err, vb.ErrExists) {
				return fmt.Errorf("volume %s already exists", args[1])
			}
			if isSnap {
				return snapErr(src, snap, o, err)
			}
			return volErr(src, o, err)
		}
		if o.json {
			inf, err := vb.Inspect(ctx, store, args[1])
			if err != nil {
				return volErr(args[1], o, err)
			}
			return printJSON(e, cloneReport{Source: args[0], Volume: inf})
		}
		e.printf("cloned %s to %s\n", args[0], args[1])
		return nil
	},
}

var cmdGC = &command{
	name: "gc", args: "NAME", nargs: 1, json: true,
	summary: "reclaim space: compact sparse chunks and delete unreferenced ones",
	detail: `If a server has NAME open (its lease held), gc never takes the volume over: it asks the
server to compact (a compaction request through the store) and waits up to --wait for the answer;
exit status 1 if none comes. Otherwise, with --wal-dir, it opens NAME for writing (taking
ownership), moves the live blocks of sparse chunks into new chunks, and deletes every chunk nothing
references (not the volume, not a snapshot, not a clone). Without --wal-dir it only deletes
unreferenced chunks of earlier owners, which is safe whoever has the volume open.
Prints the stored and live bytes before and after.`,
	flags: func(fs *flag.FlagSet, o *opts) {
		fs.DurationVar(&o.wait, "wait", 5*time.Minute, "how long to wait for a serving owner to compact")
	},
	run: func(ctx context.Context, e *env, o *opts, args []string) error {
		store, err := openStore(ctx, o)
		if err != nil {
			return err
		}
		defer store.Close()
		name := args[0]
		before, err := vb.Space(ctx, store, name)
		if err != nil {
			return volErr(name, o, err)
		}
		live, epoch, err := vb.HasLiveOwner(ctx, store, name)
		if err != nil {
			return volErr(name, o, err)
		}
		var rep vb.GCReport
		how, by := "", "collect"
		switch {
		case live:
			by = "owner"
			e.note("%s is open on a node (epoch %d): asking its owner to compact (waiting up to %s)", name, epoch, o.wait)
			if _, err := vb.AskCompact(ctx, store, name, o.wait); err != nil {
				if errors.Is(err, vb.ErrOwnerNoAnswer) {
					return fmt.Errorf("%v; the server may be too old to compact on request, or stuck: try again, or stop it and run gc with --wal-dir", err)
				}
				return volErr(name, o, err)
			}
			how = fmt.Sprintf("compacted by its owner (epoch %d)", epoch)
		case o.walDir != "":
			by = "offline"
			keys, err := o.keys()
			if err != nil {
				return err
			}
			v, err := vb.Open(ctx, store, name, vb.Options{WALDir: o.walDir, Compaction: vb.CompactionOptions{Disabled: true}, Keys: keys})
			if err != nil {
				return volErr(name, o, err)
			}
			rep, err = v.GC(ctx)
			if cerr := v.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return volErr(name, o, err)
			}
			how = fmt.Sprintf("%d chunks compacted (%s of live data moved), %d unreferenced chunks deleted",
				rep.ChunksRewritten, units.Format(int64(rep.BlocksMoved)*vb.BlockSize), rep.ChunksDeleted)
		default:
			if rep, err = vb.GC(ctx, store, name); err != nil {
				return volErr(name, o, err)
			}
			how = fmt.Sprintf("%d unreferenced chunks deleted (compacting sparse chunks needs --wal-dir, or a server that has the volume open)", rep.ChunksDeleted)
		}
		after, err := vb.Space(ctx, store, name)
		if err != nil {
			return volErr(name, o, err)
		}
		if o.json {
			return printJSON(e, gcReport{Name: name, GCReport: rep, By: by, OwnerEpoch: epoch,
				BytesMoved: int64(rep.BlocksMoved) * vb.BlockSize, ChunksBefore: before.Chunks, ChunksAfter: after.Chunks,
				StoredBytesBefore: before.StoredBytes, StoredBytesAfter: after.StoredBytes, LiveBytes: after.LiveBytes,
				RatioBefore: before.Ratio(), RatioAfter: after.Ratio()})
		}
		e.printf("gc %s: %s; chunks %d -> %d, stored %s -> %s for %s live (%.2fx -> %.2fx)\n",
			name, how, before.Chunks, after.Chunks, units.Format(before.StoredBytes), units.Format(after.StoredBytes),
			units.Format(after.LiveBytes), before.Ratio(), after.Ratio())
		return nil
	},
}

// cloneReport is clone's JSON report: the source and the new volume.
type cloneReport struct {
	Source string // VOLUME@SNAPSHOT or VOLUME, as given
	Volume vb.Info
}

// gcReport is gc's JSON report.
type gcReport struct {
	Name string
	vb.GCReport
	// By says who did the work: "owner" (a serving owner compacted on
	// request; its counts are not reported here), "offline" (--wal-dir:
	// compaction and collection) or "collect" (unreferenced chunks only).
	By                                  string
	OwnerEpoch                          uint64 `json:",omitempty"`
	BytesMoved                          int64
	ChunksBefore, ChunksAfter           int
	StoredBytesBefore, StoredBytesAfter int64
	LiveBytes                           int64
	RatioBefore, RatioAfter             float64
}
