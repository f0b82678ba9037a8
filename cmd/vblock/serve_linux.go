//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/nbdkit"
	"github.com/viperblock/viperblock-csi/pkg/units"
	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
)

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
	if o.keyFile != "" {
		// Read it now: a file that cannot be used fails here, clearly.
		if _, err := o.keys(); err != nil {
			return err
		}
		params = append(params, "encryption_key_file="+o.keyFile)
	}
	if o.walDir != "" {
		params = append(params, "wal_dir="+o.walDir)
	}
	if o.cache != "" {
		params = append(params, "cache="+o.cache)
	}
	if o.readCache != "" {
		params = append(params, "read_cache="+o.readCache)
	}
	if o.metrics != "" {
		m, err := filepath.Abs(o.metrics)
		if err != nil {
			return err
		}
		params = append(params, "metrics="+m)
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
	if o.walDefer != "" {
		if n, err := units.Parse(o.walDefer); err != nil || n < 0 {
			return usagef("--wal-defer %s: want a size such as 64MiB (0: none)", o.walDefer)
		}
		params = append(params, "wal_defer="+o.walDefer)
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
