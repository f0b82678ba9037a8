package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"syscall"

	"github.com/viperblock/viperblock-csi/pkg/units"
	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

// ioSize is the unit of copying between a file and a volume.
const ioSize = 4 << 20

var cmdImport = &command{
	name: "import", args: "NAME FILE", nargs: 2, json: true,
	summary: "copy a raw image (file, block device or - for stdin) into a volume",
	detail: `Writes FILE into volume NAME from offset 0 and drains it to the store. NAME is created with
FILE's size (or --size) if it does not exist; an existing volume must be at least as large.
Holes and all-zero blocks are not stored. The volume must not be served while importing: the import
takes ownership of it (refused while a server has it open, unless --force). Without --wal-dir a temporary WAL directory is used.`,
	flags: func(fs *flag.FlagSet, o *opts) {
		fs.StringVar(&o.size, "size", "", "size for a new volume (default: the size of FILE)")
		fs.BoolVar(&o.force, "force", false, "take the volume over even if a server has it open (it is asked to release the volume, or its lease must expire)")
		fs.StringVar(&o.progress, "progress", "auto", "progress bar: auto (on a terminal), always or never")
		fs.StringVar(&o.compression, "compression", "none", "for a new volume: zstd, lz4 or none (with --encryption-key-file it is encrypted too)")
	},
	run: func(ctx context.Context, e *env, o *opts, args []string) error {
		var rep imageReport
		if err := importFile(ctx, e, o, args[0], args[1], &rep); err != nil {
			return err
		}
		if o.json {
			return printJSON(e, rep)
		}
		return nil
	},
}

var cmdExport = &command{
	name: "export", args: "NAME FILE", nargs: 2, json: true,
	summary: "copy a volume's committed state to a raw image (file, block device or - for stdout)",
	detail: `Reads volume NAME as committed in the store and writes it to FILE. A new regular file is
written sparse (holes stay holes). An existing regular file is refused unless --force. Writes that a
running server has not drained yet are not included.`,
	flags: func(fs *flag.FlagSet, o *opts) {
		fs.BoolVar(&o.force, "force", false, "overwrite an existing FILE")
		fs.StringVar(&o.progress, "progress", "auto", "progress bar: auto (on a terminal), always or never")
	},
	run: func(ctx context.Context, e *env, o *opts, args []string) error {
		if o.json && args[1] == "-" {
			return usagef("--json needs stdout: export to a FILE, not -")
		}
		var rep imageReport
		if err := exportFile(ctx, e, o, args[0], args[1], &rep); err != nil {
			return err
		}
		if o.json {
			return printJSON(e, rep)
		}
		return nil
	},
}

// imageReport is the JSON report of import, export and load-dir.
type imageReport struct {
	Volume    string
	File      string // the image (for load-dir, the directory)
	Created   bool   // import: the volume was created
	Bytes     int64  // bytes copied (import: the image's length; export: the volume's size)
	DataBytes int64  // of which data (not holes or zeros)
	Label     string `json:",omitempty"` // load-dir: the filesystem's label
}

// openWritable opens a volume for writing with o.walDir or, if none, a
// temporary WAL directory. done closes the volume (draining it) and removes
// a temporary WAL directory once the drain succeeded.
func openWritable(ctx context.Context, o *opts, store backend.Store, name string) (v *vb.Volume, done func() error, err error) {
	walDir, temp := o.walDir, false
	if walDir == "" {
		if walDir, err = os.MkdirTemp(o.tmpDir, "vblock-wal-"); err != nil {
			return nil, nil, err
		}
		temp = true
	}
	keys, err := o.keys()
	if err != nil {
		return nil, nil, err
	}
	v, err = vb.Open(ctx, store, name, vb.Options{WALDir: walDir, CacheBlocks: 1024, Keys: keys})
	if err != nil {
		if temp {
			os.RemoveAll(walDir)
		}
		return nil, nil, volErr(name, &opts{store: o.store, walDir: walDir}, err)
	}
	return v, func() error {
		if err := v.Close(); err != nil {
			return fmt.Errorf("draining %s to the store failed; the data is kept in the WAL at %s (serve or import with --wal-dir %s to retry): %w", name, walDir, walDir, err)
		}
		if temp {
			os.RemoveAll(walDir)
		}
		return nil
	}, nil
}

func importFile(ctx context.Context, e *env, o *opts, name, path string, rep *imageReport) (err error) {
	var f *os.File
	if path == "-" {
		f = os.Stdin
	} else if f, err = os.Open(path); err != nil {
		return err
	} else {
		defer f.Close()
	}
	srcSize, seekable := fileSize(f)
	store, err := openStore(ctx, o)
	if err != nil {
		return err
	}
	defer store.Close()

	want := srcSize
	if o.size != "" {
		if want, err = parseSize(o.size); err != nil {
			return err
		}
		if seekable && want < srcSize {
			return usagef("--size %s is smaller than %s (%s)", o.size, path, units.Format(srcSize))
		}
	}
	fresh := false
	inf, err := vb.Inspect(ctx, store, name)
	switch {
	case errors.Is(err, vb.ErrNotFound):
		if want <= 0 {
			return usagef("volume %s does not exist and the size of %s is unknown: pass --size", name, path)
		}
		keys, err := o.keys()
		if err != nil {
			return err
		}
		comp, err := vb.ParseCompression(o.compression)
		if err != nil {
			return usagef("--compression %s: want zstd, lz4 or none", o.compression)
		}
		if err := vb.CreateVolume(ctx, store, name, want, vb.CreateOptions{Keys: keys, Compression: comp}); err != nil {
			return volErr(name, o, err)
		}
		e.note("created volume %s (%s)", name, units.Format(roundBlock(want)))
		fresh = true
	case err != nil:
		return volErr(name, o, err)
	case seekable && inf.Size < srcSize:
		return fmt.Errorf("volume %s (%s) is smaller than %s (%s)", name, units.Format(inf.Size), path, units.Format(srcSize))
	case inf.Open && !o.force:
		return fmt.Errorf("volume %s is open for writing by a server (here or on another node); importing would take it over (the server would be asked to release it and fail its writes from then on). Stop it first, or pass --force to take over (e.g. after its node died)", name)
	}
	v, done, err := openWritable(ctx, o, store, name)
	if err != nil {
		return err
	}
	defer func() {
		derr := done()
		if err == nil {
			err = derr
			if err == nil {
				e.note("volume %s is drained to the store", name)
			}
		}
	}()
	total := srcSize
	if !seekable {
		total = v.Size()
	}
	bar := newProgress(e, o.progress, "import", total)
	var written, zeroed int64
	emit := func(p []byte, off int64) error {
		// Store only non-zero blocks; zero runs become Zero (metadata) on
		// an existing volume and nothing on a fresh one.
		for i := 0; i < len(p); {
			j := i
			zero := isZero(p[i:min(i+vb.BlockSize, len(p))])
			for j < len(p) && isZero(p[j:min(j+vb.BlockSize, len(p))]) == zero {
				j = min(j+vb.BlockSize, len(p))
			}
			if zero {
				if !fresh {
					if err := v.Zero(off+int64(i), int64(j-i)); err != nil {
						return err
					}
				}
				zeroed += int64(j - i)
			} else {
				if _, err := v.WriteAt(p[i:j], off+int64(i)); err != nil {
					return err
				}
				written += int64(j - i)
			}
			i = j
		}
		return nil
	}
	buf := make([]byte, ioSize)
	var off int64
	copyRange := func(start, end int64) error { // [start, end) of a seekable file
		for off = start; off < end; {
			if err := ctx.Err(); err != nil {
				return err
			}
			n := int(min(int64(len(buf)), end-off))
			if _, err := f.ReadAt(buf[:n], off); err != nil {
				return fmt.Errorf("read %s at %d: %w", path, off, err)
			}
			if err := emit(buf[:n], off); err != nil {
				return err
			}
			off += int64(n)
			bar.set(off)
		}
		return nil
	}
	if seekable {
		for _, r := range dataRanges(f, srcSize) {
			if !r.data {
				if !fresh {
					if err := v.Zero(r.start, r.end-r.start); err != nil {
						return err
					}
				}
				zeroed += r.end - r.start
				bar.set(r.end)
				continue
			}
			if err := copyRange(r.start, r.end); err != nil {
				return err
			}
		}
		off = srcSize
	} else {
		for {
			if err := ctx.Err(); err != nil {
				return err
			}
			n, rerr := io.ReadFull(f, buf)
			if n > 0 {
				if off+int64(n) > v.Size() {
					return fmt.Errorf("input is larger than volume %s (%s)", name, units.Format(v.Size()))
				}
				if err := emit(buf[:n], off); err != nil {
					return err
				}
				off += int64(n)
				bar.set(off)
			}
			if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
				break
			}
			if rerr != nil {
				return rerr
			}
		}
	}
	bar.done()
	*rep = imageReport{Volume: name, File: path, Created: fresh, Bytes: off, DataBytes: written}
	e.note("imported %s into %s (%s of data, %s of zeros/holes); draining to the store", units.Format(off), name, units.Format(written), units.Format(zeroed))
	return nil
}

func exportFile(ctx context.Context, e *env, o *opts, name, path string, rep *imageReport) (err error) {
	store, err := openStore(ctx, o)
	if err != nil {
		return err
	}
	defer store.Close()
	keys, err := o.keys()
	if err != nil {
		return err
	}
	v, err := vb.Open(ctx, store, name, vb.Options{ReadOnly: true, CacheBlocks: 1024, Keys: keys})
	if err != nil {
		return volErr(name, o, err)
	}
	defer v.Close()
	size := v.Size()

	var f *os.File
	sparse := false
	switch st, serr := os.Stat(path); {
	case path == "-":
		f = os.Stdout
	case serr == nil && st.Mode().IsRegular() && !o.force:
		return fmt.Errorf("%s exists; pass --force to overwrite it", path)
	case serr == nil && st.Mode()&os.ModeDevice != 0:
		if f, err = os.OpenFile(path, os.O_WRONLY, 0); err != nil {
			return err
		}
		if devSize, _ := fileSize(f); devSize < size {
			f.Close()
			return fmt.Errorf("%s (%s) is smaller than volume %s (%s)", path, units.Format(devSize), name, units.Format(size))
		}
	default:
		if f, err = os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644); err != nil {
			return err
		}
		if err := f.Truncate(size); err != nil {
			f.Close()
			return err
		}
		sparse = true
	}
	defer func() {
		if f == os.Stdout {
			return
		}
		if serr := f.Sync(); err == nil && serr != nil && !errors.Is(serr, syscall.EINVAL) {
			err = serr
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	bar := newProgress(e, o.progress, "export", size)
	buf := make([]byte, ioSize)
	zeros := make([]byte, ioSize)
	var data int64
	for off := int64(0); off < size; {
		if err := ctx.Err(); err != nil {
			return err
		}
		ext, err := v.Extents(off, min(size-off, 1<<30))
		if err != nil {
			return err
		}
		for _, x := range ext {
			for p := x.Offset; p < x.Offset+x.Length; {
				n := min(int64(len(buf)), x.Offset+x.Length-p)
				switch {
				case x.Zero && sparse:
				case x.Zero:
					if _, err := writeAt(f, zeros[:n], p); err != nil {
						return err
					}
				default:
					if _, err := v.ReadAt(buf[:n], p); err != nil {
						return fmt.Errorf("read %s at %d: %w", name, p, err)
					}
					if sparse && isZero(buf[:n]) {
						break
					}
					if _, err := writeAt(f, buf[:n], p); err != nil {
						return err
					}
					data += n
				}
				p += n
				bar.set(p)
			}
			off = x.Offset + x.Length
		}
	}
	bar.done()
	*rep = imageReport{Volume: name, File: path, Bytes: size, DataBytes: data}
	if f != os.Stdout {
		e.note("exported volume %s (%s, %s of data) to %s", name, units.Format(size), units.Format(data), path)
	}
	return nil
}

// writeAt writes at off, or sequentially for stdout (offsets then arrive in
// order).
func writeAt(f *os.File, p []byte, off int64) (int, error) {
	if f == os.Stdout {
		return f.Write(p)
	}
	return f.WriteAt(p, off)
}

// fileSize returns the size of a regular file or block device and whether
// f supports positioned reads.
func fileSize(f *os.File) (int64, bool) {
	st, err := f.Stat()
	if err != nil {
		return 0, false
	}
	if st.Mode().IsRegular() {
		return st.Size(), true
	}
	if st.Mode()&os.ModeDevice != 0 {
		if n, err := f.Seek(0, io.SeekEnd); err == nil {
			f.Seek(0, io.SeekStart)
			return n, true
		}
	}
	return 0, false
}

type fileRange struct {
	start, end int64
	data       bool
}

// dataRanges splits [0, size) of f into data and hole runs using
// SEEK_DATA/SEEK_HOLE; where they are not supported, all of it is data.
func dataRanges(f *os.File, size int64) []fileRange {
	const seekData, seekHole = 3, 4
	fd := int(f.Fd())
	var out []fileRange
	for off := int64(0); off < size; {
		d, err := syscall.Seek(fd, off, seekData)
		if err != nil {
			if errors.Is(err, syscall.ENXIO) { // no data after off
				return append(out, fileRange{off, size, false})
			}
			return append(out, fileRange{off, size, true})
		}
		d = min(d, size)
		if d > off {
			out = append(out, fileRange{off, d, false})
		}
		h, err := syscall.Seek(fd, d, seekHole)
		if err != nil {
			h = size
		}
		h = min(h, size)
		if h > d {
			out = append(out, fileRange{d, h, true})
		}
		if h <= off {
			return append(out, fileRange{off, size, true})
		}
		off = h
	}
	return out
}

var zeroBlock = make([]byte, ioSize)

func isZero(p []byte) bool {
	for len(p) > 0 {
		n := min(len(p), len(zeroBlock))
		if !bytes.Equal(p[:n], zeroBlock[:n]) {
			return false
		}
		p = p[n:]
	}
	return true
}
