package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/viperblock/viperblock-csi/pkg/units"
	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
)

var cmdLoadDir = &command{
	name: "load-dir", args: "NAME DIR", nargs: 2, json: true,
	summary: "build an ext4 filesystem holding DIR's files on a volume",
	detail: `Builds an ext4 image of DIR's contents with 'mkfs.ext4 -d' in a temporary sparse file and
imports it into volume NAME, which is created if missing (size from --size, or DIR's size plus
room to spare). Loading into an existing volume replaces its contents and needs --force. Mount it
after 'vblock serve' through any NBD client (nbdfuse + a loop device, nbd-client, qemu).`,
	flags: func(fs *flag.FlagSet, o *opts) {
		fs.StringVar(&o.size, "size", "", "volume size (default: DIR's size plus 30% and 64 MiB, at least 64 MiB)")
		fs.StringVar(&o.label, "label", "", "filesystem label (default NAME, cut to 16 bytes)")
		fs.BoolVar(&o.force, "force", false, "replace the contents of an existing volume (taking it over if a server has it open)")
		fs.StringVar(&o.tmpDir, "tmp-dir", "", "directory for the temporary image (default $TMPDIR)")
		fs.StringVar(&o.progress, "progress", "auto", "progress bar: auto (on a terminal), always or never")
		fs.StringVar(&o.compression, "compression", "none", "for a new volume: zstd, lz4 or none (with --encryption-key-file it is encrypted too)")
	},
	run: runLoadDir,
}

func runLoadDir(ctx context.Context, e *env, o *opts, args []string) error {
	name, dir := args[0], args[1]
	st, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return usagef("%s is not a directory", dir)
	}
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		return fmt.Errorf("mkfs.ext4 not found (install e2fsprogs)")
	}
	store, err := openStore(ctx, o)
	if err != nil {
		return err
	}
	inf, ierr := vb.Inspect(ctx, store, name)
	store.Close()
	var size int64
	switch {
	case ierr == nil:
		if !o.force {
			return fmt.Errorf("volume %s exists; pass --force to replace its contents with a new filesystem", name)
		}
		size = inf.Size
		if o.size != "" {
			want, err := parseSize(o.size)
			if err != nil {
				return err
			}
			if roundBlock(want) != size {
				return fmt.Errorf("volume %s exists with size %s; --size %s does not match", name, units.Format(size), o.size)
			}
		}
	case errors.Is(ierr, vb.ErrNotFound):
		if o.size != "" {
			if size, err = parseSize(o.size); err != nil {
				return err
			}
		} else {
			used, files, err := treeSize(dir)
			if err != nil {
				return err
			}
			size = max(64<<20, used+used*3/10+files*4096+(64<<20))
			size = (size + (1<<20 - 1)) &^ (1<<20 - 1)
		}
	default:
		return volErr(name, o, ierr)
	}

	img, err := os.CreateTemp(o.tmpDir, "vblock-load-*.img")
	if err != nil {
		return err
	}
	imgPath := img.Name()
	defer os.Remove(imgPath)
	if err := img.Truncate(size); err != nil {
		img.Close()
		return err
	}
	img.Close()
	label := o.label
	if label == "" {
		label = name
	}
	if len(label) > 16 {
		label = label[:16]
	}
	e.note("building an ext4 filesystem of %s from %s", units.Format(size), dir)
	out, err := exec.CommandContext(ctx, mkfs, "-q", "-F", "-t", "ext4", "-L", label, "-d", dir, imgPath).CombinedOutput()
	if err != nil {
		return fmt.Errorf("mkfs.ext4 -d %s failed: %v: %s", dir, err, strings.TrimSpace(string(out)))
	}
	io := *o
	io.size = ""
	var rep imageReport
	if err := importFile(ctx, e, &io, name, imgPath, &rep); err != nil {
		return err
	}
	if o.json {
		rep.File, rep.Label = dir, label
		return printJSON(e, rep)
	}
	e.printf("volume %s now holds an ext4 filesystem (label %q, %s) with the contents of %s\n", name, label, units.Format(size), dir)
	return nil
}

// treeSize adds up the space DIR's files need: bytes rounded to 4 KiB, and
// the number of entries.
func treeSize(dir string) (bytes, entries int64, err error) {
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		entries++
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			bytes += (info.Size() + 4095) &^ 4095
		}
		return nil
	})
	return bytes, entries, err
}
