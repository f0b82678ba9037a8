// Command vblock manages Viperblock volumes: create, list, inspect, delete,
// serve over NBD (through nbdkit and the viperblock plugin), import and
// export raw images, check a volume's integrity, build an ext4 filesystem
// from a directory, snapshot, clone, and reclaim space.
//
// Exit status: 0 success, 1 failure, 2 bad usage, 3 fsck found corruption.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/viperblock/viperblock-csi/internal/version"
	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/seal"
)

// Exit statuses.
const (
	exitOK      = 0
	exitFail    = 1
	exitUsage   = 2
	exitCorrupt = 3
)

// Environment variables holding defaults for --store, --wal-dir, --plugin.
const (
	envStore  = "VBLOCK_STORE"
	envWALDir = "VBLOCK_WAL_DIR"
	envPlugin = "VBLOCK_PLUGIN"
	// envKeyFile: the default of --encryption-key-file.
	envKeyFile = "VBLOCK_ENCRYPTION_KEY_FILE"
)

// command is one subcommand.
type command struct {
	name    string
	args    string // positional arguments, for the usage line
	summary string
	detail  string
	flags   func(fs *flag.FlagSet, o *opts)
	run     func(ctx context.Context, e *env, o *opts, args []string) error
	nargs   int // required positional arguments
	// json: the command takes --json and then prints one JSON document
	// (its report) on stdout instead of text; notes and errors stay on
	// stderr and the exit status is the same.
	json bool
	// words completes the positional arguments: the choices for the
	// first (such as a subcommand), if any; see completion.go.
	words []string
}

// opts holds every flag; each subcommand registers the ones it uses.
type opts struct {
	store, walDir string

	size          string
	long, json    bool
	socket        string
	plugin        string
	nbdkit        string
	cache         string
	readCache     string
	metrics       string
	readonly      bool
	drainInterval string
	walDefer      string
	durability    string
	leaseDuration string
	compact       string // serve: compaction parameters, "key=value,..."
	wait          time.Duration
	verbose       bool
	threads       int
	rebuild       bool
	force         bool
	progress      string
	label         string
	tmpDir        string
	keyFile       string // --encryption-key-file: the KEK of an encrypted volume
	newKeyFile    string // rekey: the new KEK
	compression   string // create: chunk compression
}

// keys returns the key source of --encryption-key-file (nil without one).
// A file that cannot be used is an error naming it (vb.ErrKey).
func (o *opts) keys() (vb.KeySource, error) {
	if o.keyFile == "" {
		return nil, nil
	}
	return seal.LoadKeyFile(o.keyFile)
}

// env is what a command talks to.
type env struct {
	stdout, stderr io.Writer
	getenv         func(string) string
	cmd            string // the running subcommand, for messages
	// json, if set, receives the command's JSON report (printJSON) while
	// its text output goes to stdout (io.Discard, for a command that
	// prints text as it goes; see runFsck).
	json io.Writer
}

// printJSON prints the JSON report v if the command writes one (env.json
// is set), and nothing otherwise.
func (e *env) printJSON(v any) error {
	if e.json == nil {
		return nil
	}
	return writeJSON(e.json, v)
}

func (e *env) printf(format string, a ...any) { fmt.Fprintf(e.stdout, format, a...) }

// note prints a progress line on stderr.
func (e *env) note(format string, a ...any) {
	fmt.Fprintf(e.stderr, "vblock: "+format+"\n", a...)
}

var commands []*command

func init() {
	commands = []*command{
		cmdCreate, cmdList, cmdInspect, cmdDelete, cmdServe,
		cmdImport, cmdExport, cmdFsck, cmdLoadDir,
		cmdSnapshot, cmdClone, cmdGC, cmdRekey, cmdStore, cmdVersion, cmdCompletion,
	}
}

var cmdVersion = &command{
	name: "version", summary: "print vblock's version, commit and build date",
	detail: `Prints the version (git describe of the source), the commit and build date stamped in by
'make build' (or what the Go toolchain recorded, for a plain go build), the Go version and the
platform. The node and controller plugins print the same with --version.`,
	json: true,
	run: func(_ context.Context, e *env, o *opts, _ []string) error {
		if o.json {
			return printJSON(e, version.Get())
		}
		e.printf("%s\n", version.Long("vblock"))
		return nil
	},
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// serve handles signals itself; the context covers the other commands.
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv))
}

// usageError is a mistake on the command line (exit 2).
type usageError struct{ msg string }

func (u usageError) Error() string { return u.msg }

func usagef(format string, a ...any) error { return usageError{fmt.Sprintf(format, a...)} }

// corruptError means fsck found damage (exit 3).
type corruptError struct{ msg string }

func (c corruptError) Error() string { return c.msg }

func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	e := &env{stdout: stdout, stderr: stderr, getenv: getenv}
	var o opts
	global := flag.NewFlagSet("vblock", flag.ContinueOnError)
	global.SetOutput(io.Discard)
	commonFlags(global, &o)
	err := global.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		topUsage(stdout)
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "vblock: %v\n", err)
		fmt.Fprintf(stderr, "run 'vblock --help' for usage\n")
		return exitUsage
	}
	rest := global.Args()
	if len(rest) == 0 {
		topUsage(stderr)
		return exitUsage
	}
	name := rest[0]
	if name == "help" {
		if len(rest) > 1 {
			if c := lookup(rest[1]); c != nil {
				cmdUsage(stdout, c)
				return exitOK
			}
		}
		topUsage(stdout)
		return exitOK
	}
	c := lookup(name)
	if c == nil {
		fmt.Fprintf(stderr, "vblock: unknown command %q\nrun 'vblock --help' for the list of commands\n", name)
		return exitUsage
	}
	e.cmd = c.name
	fs := flag.NewFlagSet("vblock "+c.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	commandFlags(fs, c, &o)
	pos, err := parseInterleaved(fs, rest[1:])
	if errors.Is(err, flag.ErrHelp) {
		cmdUsage(stdout, c)
		return exitOK
	}
	if err == nil && c.nargs >= 0 && len(pos) != c.nargs {
		err = usagef("expected %d argument(s) (%s), got %d", c.nargs, c.args, len(pos))
	}
	if err != nil {
		fmt.Fprintf(stderr, "vblock %s: %v\nusage: vblock %s %s (see 'vblock %s --help')\n", c.name, err, c.name, c.args, c.name)
		return exitUsage
	}
	if o.store == "" {
		o.store = getenv(envStore)
	}
	if o.walDir == "" {
		o.walDir = getenv(envWALDir)
	}
	if o.keyFile == "" {
		o.keyFile = getenv(envKeyFile)
	}
	if o.keyFile != "" {
		if abs, err := filepath.Abs(o.keyFile); err == nil {
			o.keyFile = abs
		}
	}
	if o.walDir != "" {
		if abs, err := filepath.Abs(o.walDir); err == nil {
			o.walDir = abs
		}
	}
	err = c.run(ctx, e, &o, pos)
	if err == nil {
		return exitOK
	}
	fmt.Fprintf(stderr, "vblock %s: %s\n", c.name, friendly(err))
	var ue usageError
	var ce corruptError
	switch {
	case errors.As(err, &ue):
		return exitUsage
	case errors.As(err, &ce):
		return exitCorrupt
	}
	return exitFail
}

func lookup(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

// parseInterleaved parses flags that may come before, between or after the
// positional arguments; everything after "--" is positional.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var tail []string
	for i, a := range args {
		if a == "--" {
			args, tail = args[:i], args[i+1:]
			break
		}
	}
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, usageError{err.Error()}
		}
		args = fs.Args()
		if len(args) == 0 {
			return append(pos, tail...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// commandFlags registers every flag command c takes.
func commandFlags(fs *flag.FlagSet, c *command, o *opts) {
	commonFlags(fs, o)
	if c.json {
		fs.BoolVar(&o.json, "json", false, "print the report as JSON on stdout")
	}
	if c.flags != nil {
		c.flags(fs, o)
	}
}

func commonFlags(fs *flag.FlagSet, o *opts) {
	fs.StringVar(&o.store, "store", o.store, "object store URL: file:///abs/dir, mem://name, s3://... or a directory path (default $"+envStore+")")
	fs.StringVar(&o.walDir, "wal-dir", o.walDir, "node-local WAL directory (default $"+envWALDir+")")
	fs.StringVar(&o.keyFile, "encryption-key-file", o.keyFile, "file holding the key-encryption key of an encrypted volume: 32 bytes, raw or base64 (default $"+envKeyFile+")")
}

func topUsage(w io.Writer) {
	fmt.Fprintf(w, `vblock manages Viperblock volumes: block devices whose data lives in an object store,
served over NBD by nbdkit with the viperblock plugin.

usage: vblock [--store URL] [--wal-dir DIR] [--encryption-key-file FILE] COMMAND [ARGS] [FLAGS]

commands:
`)
	for _, c := range commands {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, `
global flags (also accepted after the command):
  --store URL    object store: file:///abs/dir, mem://name, s3://..., or a directory (default $%s)
  --wal-dir DIR  node-local write-ahead log directory (default $%s)
  --encryption-key-file FILE
                 key-encryption key of encrypted volumes, 32 bytes raw or base64 (default $%s)

Sizes are written like 10GiB, 512MiB, 1.5G or 4096 (bytes); K/M/G/T and KiB/MiB/GiB/TiB are
powers of 1024, KB/MB/GB/TB powers of 1000.
Commands that report take --json: one JSON document on stdout instead of text.
Run 'vblock COMMAND --help' for details. Exit status: 0 ok, 1 failure, 2 bad usage, 3 fsck found corruption.
`, envStore, envWALDir, envKeyFile)
}

func cmdUsage(w io.Writer, c *command) {
	fmt.Fprintf(w, "usage: vblock %s %s\n\n%s\n", c.name, c.args, c.summary)
	if c.detail != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(c.detail))
	}
	fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
	var o opts
	commandFlags(fs, c, &o)
	fmt.Fprintf(w, "\nflags:\n")
	fs.SetOutput(w)
	fs.VisitAll(func(f *flag.Flag) {
		name, usage := flag.UnquoteUsage(f)
		if name != "" {
			name = " " + name
		}
		def := ""
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" {
			def = fmt.Sprintf(" (default %s)", f.DefValue)
		}
		dash := "--"
		if len(f.Name) == 1 {
			dash = "-"
		}
		fmt.Fprintf(w, "  %s%s%s\n      %s%s\n", dash, f.Name, name, usage, def)
	})
}

// storeURL turns --store into a URL: a bare path becomes file:///abs/path.
func storeURL(s string) (string, error) {
	if s == "" {
		return "", usagef("no store: pass --store URL or set %s (e.g. file:///var/lib/viperblock)", envStore)
	}
	if strings.Contains(s, "://") {
		return s, nil
	}
	abs, err := filepath.Abs(s)
	if err != nil {
		return "", err
	}
	return "file://" + abs, nil
}

// openStore opens the store named by o.store.
func openStore(ctx context.Context, o *opts) (backend.Store, error) {
	u, err := storeURL(o.store)
	if err != nil {
		return nil, err
	}
	s, err := backend.Open(ctx, u)
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", redact(u), err)
	}
	return s, nil
}

// friendly renders an error as one line, explaining the common cases.
func friendly(err error) string {
	var ue usageError
	var ce corruptError
	if errors.As(err, &ue) || errors.As(err, &ce) {
		return err.Error()
	}
	msg := err.Error()
	hint := ""
	switch {
	case errors.Is(err, vb.ErrInvalidName):
		hint = "names are 1-128 characters of A-Z a-z 0-9 . _ - starting with a letter or digit"
	case errors.Is(err, vb.ErrNeedsWALDir):
		hint = "pass --wal-dir or set " + envWALDir
	case errors.Is(err, vb.ErrFenced):
		hint = "another process opened the volume for writing"
	case errors.Is(err, vb.ErrKey):
		hint = "encryption key: --encryption-key-file FILE or $" + envKeyFile + "; nothing was changed"
	}
	msg = strings.ReplaceAll(msg, "\n", " ")
	if hint != "" {
		msg += " (" + hint + ")"
	}
	return msg
}
