package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/units"
	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/vfs"
)

var cmdCreate = &command{
	name: "create", args: "NAME --size SIZE", nargs: 1, json: true,
	summary: "create an empty volume",
	detail: `Creates volume NAME of SIZE bytes (rounded up to 4 KiB) in the store. The volume reads as
zeros until written. Fails if NAME exists. --durability store makes every flush durable in the
object store before it returns (node, the default: durable on the serving node's disk).
With --encryption-key-file (or $VBLOCK_ENCRYPTION_KEY_FILE) the volume is encrypted: its data and
its WAL are sealed with AES-256-GCM under a random data key, kept in the manifest wrapped by the
file's key, which every later command that opens the volume needs. --compression zstd or lz4
compresses its chunks (data that does not compress is stored as it is).`,
	flags: func(fs *flag.FlagSet, o *opts) {
		fs.StringVar(&o.size, "size", "", "volume size, e.g. 10GiB, 512MiB or bytes (required)")
		fs.StringVar(&o.durability, "durability", "node", "node or store: where a flush is durable")
		fs.StringVar(&o.compression, "compression", "none", "zstd, lz4 or none: how chunks are compressed")
	},
	run: func(ctx context.Context, e *env, o *opts, args []string) error {
		if o.size == "" {
			return usagef("--size is required (e.g. --size 10GiB)")
		}
		size, err := parseSize(o.size)
		if err != nil {
			return err
		}
		class, err := vb.ParseDurability(o.durability)
		if err != nil {
			return usagef("--durability %s: want node or store", o.durability)
		}
		comp, err := vb.ParseCompression(o.compression)
		if err != nil {
			return usagef("--compression %s: want zstd, lz4 or none", o.compression)
		}
		keys, err := o.keys()
		if err != nil {
			return err
		}
		store, err := openStore(ctx, o)
		if err != nil {
			return err
		}
		defer store.Close()
		if err := vb.CreateVolume(ctx, store, args[0], size, vb.CreateOptions{Durability: class, Compression: comp, Keys: keys}); err != nil {
			return volErr(args[0], o, err)
		}
		if o.json {
			return printJSON(e, createReport{Name: args[0], Size: roundBlock(size), Durability: class, Compression: comp, Encrypted: keys != nil})
		}
		what := ""
		if keys != nil {
			what += ", encrypted"
		}
		if comp != vb.CompressionNone {
			what += ", " + string(comp) + " compression"
		}
		e.printf("created volume %s (%s%s)\n", args[0], units.Format(roundBlock(size)), what)
		return nil
	},
}

var cmdList = &command{
	name: "list", args: "", nargs: 0, json: true,
	summary: "list the volumes in the store",
	flags: func(fs *flag.FlagSet, o *opts) {
		fs.BoolVar(&o.long, "l", false, "long listing: size, bytes written, epoch")
	},
	run: func(ctx context.Context, e *env, o *opts, args []string) error {
		store, err := openStore(ctx, o)
		if err != nil {
			return err
		}
		defer store.Close()
		names, err := vb.List(ctx, store)
		if err != nil {
			return err
		}
		sort.Strings(names)
		if !o.long && !o.json {
			for _, n := range names {
				e.printf("%s\n", n)
			}
			return nil
		}
		infos := make([]vb.Info, 0, len(names))
		for _, n := range names {
			inf, err := vb.Inspect(ctx, store, n)
			if err != nil {
				return volErr(n, o, err)
			}
			infos = append(infos, inf)
		}
		if o.json {
			return printJSON(e, infos)
		}
		tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "NAME\tSIZE\tWRITTEN\tEPOCH\n")
		for _, inf := range infos {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\n", inf.Name, units.Format(inf.Size), units.Format(inf.WrittenBytes), inf.Epoch)
		}
		return tw.Flush()
	},
}

var cmdInspect = &command{
	name: "inspect", args: "NAME", nargs: 1,
	summary: "show a volume's committed state",
	detail: `Shows what the store holds for NAME: size, bytes written, extents, chunks, snapshots, parent
ownership epoch, clones, whether a writer has it open, and the bytes its chunk objects take against the
live data they hold (the volume's and its snapshots'). Writes still in a server's memory or WAL are not included; with --wal-dir,
the local WAL of NAME is summarized as well.`,
	json: true,
	run: func(ctx context.Context, e *env, o *opts, args []string) error {
		store, err := openStore(ctx, o)
		if err != nil {
			return err
		}
		defer store.Close()
		inf, err := vb.Inspect(ctx, store, args[0])
		if err != nil {
			return volErr(args[0], o, err)
		}
		space, err := vb.Space(ctx, store, args[0])
		if err != nil {
			return volErr(args[0], o, err)
		}
		wal := localWAL(o.walDir, args[0])
		if o.json {
			return printJSON(e, struct {
				vb.Info
				Space            vb.SpaceInfo
				Ratio            float64   `json:"StoredToLiveRatio"`
				CompressionRatio float64   `json:"CompressionRatio"`
				LocalWAL         *walUsage `json:"LocalWAL,omitempty"`
			}{inf, space, space.Ratio(), space.CompressionRatio(), wal})
		}
		pct := 0.0
		if inf.Size > 0 {
			pct = 100 * float64(inf.WrittenBytes) / float64(inf.Size)
		}
		parent := inf.Parent
		if parent == "" {
			parent = "none"
		}
		tw := tabwriter.NewWriter(e.stdout, 0, 4, 1, ' ', 0)
		fmt.Fprintf(tw, "name:\t%s\n", inf.Name)
		fmt.Fprintf(tw, "size:\t%s (%d bytes)\n", units.Format(inf.Size), inf.Size)
		fmt.Fprintf(tw, "durability:\t%s\n", inf.Durability)
		fmt.Fprintf(tw, "written:\t%s (%d bytes, %.1f%% of the volume)\n", units.Format(inf.WrittenBytes), inf.WrittenBytes, pct)
		fmt.Fprintf(tw, "extents:\t%d\n", inf.Extents)
		fmt.Fprintf(tw, "chunks:\t%d (%s)\n", inf.Chunks, units.Format(inf.ChunkBytes))
		fmt.Fprintf(tw, "stored:\t%s in %d chunk object(s) for %s live (%.2fx); %d pinned only by snapshots, %d unreferenced\n",
			units.Format(space.StoredBytes), space.Chunks, units.Format(space.LiveBytes), space.Ratio(), space.PinnedChunks, space.GarbageChunks)
		enc := "no"
		if space.Encrypted {
			enc = "yes (AES-256-GCM; commands that open it need its key)"
		}
		fmt.Fprintf(tw, "encrypted:\t%s\n", enc)
		fmt.Fprintf(tw, "compression:\t%s: %s of blocks stored in %s (%.2fx)\n", space.Compression,
			units.Format(space.BlockBytes), units.Format(space.StoredBytes), space.CompressionRatio())
		fmt.Fprintf(tw, "snapshots:\t%s\n", listOrNone(inf.Snapshots))
		fmt.Fprintf(tw, "parent:\t%s\n", parent)
		fmt.Fprintf(tw, "clones:\t%s\n", listOrNone(inf.Dependants))
		open := "no"
		if inf.Open {
			open = "yes, owned by a writer (its latest writes may not be committed yet)"
		}
		fmt.Fprintf(tw, "open:\t%s\n", open)
		fmt.Fprintf(tw, "epoch:\t%d\n", inf.Epoch)
		fmt.Fprintf(tw, "committed seq:\t%d\n", inf.CommittedSeq)
		if !inf.Committed.IsZero() {
			fmt.Fprintf(tw, "last commit:\t%s\n", inf.Committed.Local().Format(time.RFC3339))
		}
		if wal != nil {
			state := "idle"
			if wal.InUse {
				state = "in use by a server"
			}
			fmt.Fprintf(tw, "local WAL:\t%s: %d segment(s) holding %s not yet in the store, %s\n", wal.Dir, wal.Segments, units.Format(wal.Bytes), state)
		}
		return tw.Flush()
	},
}

var cmdDelete = &command{
	name: "delete", args: "NAME", nargs: 1, json: true,
	summary: "delete a volume and its data",
	detail: `Deletes NAME's manifest (the volume is gone at once) and then its chunks from the store. With
--wal-dir, NAME's local WAL is removed too, and the delete is refused while a server on this node
holds it. The volume must not be served anywhere else.`,
	run: func(ctx context.Context, e *env, o *opts, args []string) error {
		name := args[0]
		store, err := openStore(ctx, o)
		if err != nil {
			return err
		}
		defer store.Close()
		if o.walDir != "" {
			if u := localWAL(o.walDir, name); u != nil && u.InUse {
				return fmt.Errorf("volume %s is being served on this node (WAL %s is locked); stop the server first", name, u.Dir)
			}
		}
		if err := vb.Delete(ctx, store, name); err != nil {
			return volErr(name, o, err)
		}
		if o.walDir != "" {
			if err := vb.DeleteWAL(nil, o.walDir, name); err != nil {
				return fmt.Errorf("volume %s deleted, but removing its local WAL failed: %v", name, err)
			}
		}
		if o.json {
			return printJSON(e, deleteReport{Name: name, Deleted: true, LocalWALRemoved: o.walDir != ""})
		}
		e.printf("deleted volume %s\n", name)
		return nil
	},
}

// The JSON reports of create and delete.
type (
	createReport struct {
		Name        string
		Size        int64 // bytes, rounded up to the block size
		Durability  vb.Durability
		Compression vb.Compression
		Encrypted   bool
	}
	deleteReport struct {
		Name            string
		Deleted         bool
		LocalWALRemoved bool // --wal-dir was given and NAME's WAL is gone
	}
)

func listOrNone(l []string) string {
	if len(l) == 0 {
		return "none"
	}
	return strings.Join(l, ", ")
}

// walUsage summarizes a volume's local WAL directory.
type walUsage struct {
	Dir      string
	Segments int   // segments holding records
	Bytes    int64 // their headers and records: data not yet in the store
	InUse    bool
}

// localWAL looks at walDir/name (layout documented in package viperblock);
// nil when there is none.
func localWAL(walDir, name string) *walUsage {
	if walDir == "" {
		return nil
	}
	dir := filepath.Join(walDir, name)
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return nil
	}
	u := &walUsage{Dir: dir}
	// The records the segments hold, not their file sizes: segment files
	// are preallocated and recycled (wal format 2).
	if ws, err := vb.InspectWAL(walDir, name); err == nil {
		u.Segments, u.Bytes = ws.Segments, ws.PendingBytes
	}
	lock, err := vfs.Default.TryLock(filepath.Join(dir, ".lock"))
	if errors.Is(err, vfs.ErrLocked) {
		u.InUse = true
	} else if err == nil {
		lock.Close()
	}
	return u
}

// volErr explains engine errors about volume name.
func volErr(name string, o *opts, err error) error {
	switch {
	case errors.Is(err, vb.ErrNotFound):
		return fmt.Errorf("volume %s not found in %s", name, redact(mustURL(o.store)))
	case errors.Is(err, vb.ErrExists):
		return fmt.Errorf("volume %s already exists", name)
	case errors.Is(err, vb.ErrInUse):
		where := ""
		if o.walDir != "" {
			where = " (WAL directory " + o.walDir + ")"
		}
		return fmt.Errorf("volume %s is open for writing by a server%s; stop it first", name, where)
	case errors.Is(err, vb.ErrInvalidName):
		return fmt.Errorf("invalid volume name %q: %w", name, vb.ErrInvalidName)
	case errors.Is(err, vb.ErrInvalidArg):
		return errors.New(strings.TrimPrefix(err.Error(), "viperblock: "))
	}
	return err
}

func mustURL(s string) string {
	u, err := storeURL(s)
	if err != nil {
		return s
	}
	return u
}

// redact hides credentials and query parameters of a store URL.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "<store>"
	}
	u.User, u.RawQuery, u.Fragment = nil, "", ""
	return u.String()
}

func parseSize(s string) (int64, error) {
	n, err := units.Parse(s)
	if err != nil {
		return 0, usageError{strings.TrimPrefix(err.Error(), "units: ")}
	}
	if n <= 0 {
		return 0, usagef("size %q must be positive", s)
	}
	return n, nil
}

func roundBlock(n int64) int64 { return (n + vb.BlockSize - 1) / vb.BlockSize * vb.BlockSize }

// printJSON prints v as the command's JSON report on stdout.
func printJSON(e *env, v any) error { return writeJSON(e.stdout, v) }

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
