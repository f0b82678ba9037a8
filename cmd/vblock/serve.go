package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/nbdkit"
	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
)

const pluginFile = "nbdkit-viperblock-plugin.so"

var cmdServe = &command{
	name: "serve", args: "NAME --socket PATH", nargs: 1,
	summary: "serve a volume over NBD on a Unix socket (runs nbdkit in the foreground)",
	detail: `Runs 'nbdkit -f --unix PATH nbdkit-viperblock-plugin.so volume=NAME ...' as a child and waits.
Clients connect with nbd+unix:///?socket=PATH (nbdcopy, nbdinfo, qemu, nbdfuse, nbd-client).
SIGINT or SIGTERM stops nbdkit: once connected clients have disconnected (nbdkit lets open
connections finish), the plugin flushes and drains the volume to the store and vblock exits 0. A
second signal kills nbdkit at once: flushed writes stay in the WAL and the next serve replays them. If the drain fails, the data stays in the WAL directory and vblock exits 1; serving the
volume again on this node retries.

Serving takes ownership of the volume. A server that has it open elsewhere (another WAL directory
or node) is asked to release it: it drains, commits and fails its writes from then on. A server
that does not answer (dead, paused, cut off from the store) is taken over once its lease has
expired (1.2 lease durations, 15 s leases by default); its writes since its last commit are then
set aside with its WAL, unless the volume's durability class is store.
The store URL reaches nbdkit through the environment ($VBLOCK_STORE), never its command line.
The plugin is found with --plugin, $VBLOCK_PLUGIN, or next to this binary (../lib or the same
directory).`,
	flags: func(fs *flag.FlagSet, o *opts) {
		fs.StringVar(&o.socket, "socket", "", "Unix socket to serve on (required)")
		fs.StringVar(&o.plugin, "plugin", "", "path of "+pluginFile+" (default $"+envPlugin+" or found next to vblock)")
		fs.StringVar(&o.nbdkit, "nbdkit", "nbdkit", "nbdkit binary")
		fs.StringVar(&o.cache, "cache", "", "read cache: blocks, N% of memory, or a size such as 256MiB")
		fs.BoolVar(&o.readonly, "readonly", false, "serve read-only without taking ownership (no WAL needed)")
		fs.StringVar(&o.size, "size", "", "create the volume with this size if it does not exist")
		fs.StringVar(&o.drainInterval, "drain-interval", "", "longest time written data waits before it is drained, e.g. 5s")
		fs.StringVar(&o.durability, "durability", "", "node or store: where a flush is durable (default: the volume's class)")
		fs.StringVar(&o.leaseDuration, "lease-duration", "", "ownership lease, e.g. 15s (the default): another node takes over an unresponsive server after 1.2x")
		fs.StringVar(&o.compact, "compact", "", "compaction settings, comma-separated: off, bandwidth=SIZE (bytes/s, 0 unlimited), requests=N (per second), ratio=R (stored/live target)")
		fs.IntVar(&o.threads, "threads", 0, "nbdkit worker threads per connection (nbdkit's default if 0)")
		fs.BoolVar(&o.verbose, "v", false, "verbose nbdkit (debug messages)")
	},
	run: runServe,
}

func runServe(ctx context.Context, e *env, o *opts, args []string) error {
	name := args[0]
	if o.socket == "" {
		return usagef("--socket PATH is required")
	}
	store, err := storeURL(o.store)
	if err != nil {
		return err
	}
	if o.walDir == "" && !o.readonly {
		return usagef("--wal-dir (or %s) is required to serve a volume writable", envWALDir)
	}
	plugin, err := findPlugin(o, e.getenv)
	if err != nil {
		return err
	}
	sock, err := filepath.Abs(o.socket)
	if err != nil {
		return err
	}
	params := []string{"volume=" + name}
	if o.walDir != "" {
		params = append(params, "wal_dir="+o.walDir)
	}
	if o.cache != "" {
		params = append(params, "cache="+o.cache)
	}
	if o.size != "" {
		if _, err := parseSize(o.size); err != nil {
			return err
		}
		params = append(params, "size="+o.size)
	}
	if o.readonly {
		params = append(params, "readonly=true")
	}
	if o.drainInterval != "" {
		params = append(params, "drain_interval="+o.drainInterval)
	}
	if o.durability != "" {
		if _, err := vb.ParseDurability(o.durability); err != nil {
			return usagef("--durability %s: want node or store", o.durability)
		}
		params = append(params, "durability="+o.durability)
	}
	if o.leaseDuration != "" {
		if d, err := time.ParseDuration(o.leaseDuration); err != nil || d < vb.MinLeaseDuration || d > time.Hour {
			return usagef("--lease-duration %s: want a duration between %s and 1h", o.leaseDuration, vb.MinLeaseDuration)
		}
		params = append(params, "lease_duration="+o.leaseDuration)
	}
	if o.compact != "" {
		for _, kv := range strings.Split(o.compact, ",") {
			k, val, _ := strings.Cut(strings.TrimSpace(kv), "=")
			switch k {
			case "off", "on":
				params = append(params, "compact="+map[bool]string{true: "true", false: "false"}[k == "on"])
			case "bandwidth", "requests", "ratio":
				params = append(params, "compact_"+k+"="+val)
			default:
				return usagef("--compact %s: unknown setting %q (want off, bandwidth=SIZE, requests=N or ratio=R)", o.compact, k)
			}
		}
	}
	var nbdArgs []string
	if o.verbose {
		nbdArgs = append(nbdArgs, "-v")
	}
	if o.readonly {
		nbdArgs = append(nbdArgs, "-r")
	}

	// Take the signals before nbdkit starts, so none is lost in between.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)

	srv, err := nbdkit.Start(context.Background(), nbdkit.Config{
		Nbdkit: o.nbdkit, Plugin: plugin, Params: params, Socket: sock, Args: nbdArgs, Threads: o.threads,
		Env:            []string{envStore + "=" + store},
		ExitWithParent: true,
		Output:         e.stderr,
	})
	if errors.Is(err, nbdkit.ErrExited) {
		return fmt.Errorf("nbdkit failed to start; see its message above")
	}
	if err != nil {
		return err
	}
	e.note("serving volume %s at %s (nbdkit pid %d); stop with Ctrl-C or SIGTERM", name, srv.URI(), srv.Pid())
	stopping := false
	var waitNote <-chan time.Time
	for {
		select {
		case sig := <-sigs:
			if stopping {
				// nbdkit finishes open connections before it exits; a
				// second signal does not wait for them.
				e.note("%v again: killing nbdkit; flushed writes stay in the WAL at %s and are replayed by the next serve", sig, o.walDir)
				srv.Kill()
				<-srv.Done()
				return fmt.Errorf("nbdkit killed before the volume was drained")
			}
			e.note("%v: stopping nbdkit; the volume is flushed and drained to the store", sig)
			stopping = true
			srv.Signal(syscall.SIGTERM)
			waitNote = time.After(2 * time.Second)
		case <-waitNote:
			e.note("nbdkit waits for connected clients to disconnect before it exits; signal again to kill it now")
		case <-srv.Done():
			if err := srv.Wait(); err != nil {
				if stopping {
					return fmt.Errorf("nbdkit did not stop cleanly (%v); flushed data is kept in the WAL at %s", exitStatus(err), o.walDir)
				}
				return fmt.Errorf("nbdkit exited unexpectedly: %v", err)
			}
			if !stopping {
				return fmt.Errorf("nbdkit exited unexpectedly")
			}
			e.note("stopped cleanly: volume %s is drained to the store", name)
			return nil
		}
	}
}

// exitStatus is how nbdkit exited, from Wait's error.
func exitStatus(err error) string {
	var ee *nbdkit.ExitError
	if errors.As(err, &ee) {
		return ee.Status
	}
	return err.Error()
}

// findPlugin locates the plugin: --plugin, $VBLOCK_PLUGIN, then next to the
// executable (../lib/ for a bin/+lib/ layout, or the same directory), then
// nbdkit's plugin directory.
func findPlugin(o *opts, getenv func(string) string) (string, error) {
	for _, p := range []string{o.plugin, getenv(envPlugin)} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("plugin %s: %w", p, err)
		}
		return filepath.Abs(p)
	}
	var tried []string
	if exe, err := os.Executable(); err == nil {
		if real, err := filepath.EvalSymlinks(exe); err == nil {
			exe = real
		}
		dir := filepath.Dir(exe)
		tried = append(tried, filepath.Join(dir, "..", "lib", pluginFile), filepath.Join(dir, pluginFile))
	}
	if out, err := exec.Command(o.nbdkit, "--dump-config").Output(); err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			if v, ok := strings.CutPrefix(line, "plugindir="); ok {
				tried = append(tried, filepath.Join(v, pluginFile))
			}
		}
	}
	for _, p := range tried {
		if _, err := os.Stat(p); err == nil {
			return filepath.Clean(p), nil
		}
	}
	return "", fmt.Errorf("cannot find %s (looked in %v); build it with 'make plugin' or pass --plugin", pluginFile, tried)
}
