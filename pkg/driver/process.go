package driver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"k8s.io/klog/v2"

	"github.com/viperblock/viperblock-csi/pkg/hostcgroup"
	"github.com/viperblock/viperblock-csi/pkg/nbdkit"
)

// nbdkitSpec describes the nbdkit server of one volume: the node always
// sets Socket, Pidfile, Status (nbdkit runs under the keeper, so that it
// outlives the node plugin and a restarted node plugin learns how it
// exited) and LogFile (a file, not a pipe, so nbdkit outlives us). The
// log file is in the volume's own directory, named after the volume: the
// supervisor labels the forwarded log lines with that name.
type nbdkitSpec = nbdkit.Config

// server is a running nbdkit: started by this process or adopted from an
// earlier node plugin process. *nbdkit.Server implements it.
type server interface {
	Pid() int
	// Done is closed when the process has exited.
	Done() <-chan struct{}
	// Stop sends SIGTERM (the plugin drains the volume to the store, then
	// nbdkit exits) and waits. It returns an error if nbdkit exited with a
	// non-zero status, or ctx's error if ctx ends first, leaving nbdkit
	// running.
	Stop(ctx context.Context) error
	// Kill sends SIGKILL.
	Kill() error
	// Adopted reports a process found after a restart.
	Adopted() bool
}

// Supervisor starts and finds nbdkit servers.
type Supervisor interface {
	Start(ctx context.Context, spec nbdkitSpec) (server, error)
	// Adopt finds the nbdkit serving spec.Socket from its pidfile, if it
	// still runs.
	Adopt(spec nbdkitSpec) (server, bool, error)
	// Probe reports whether nbdkit and the plugin are there to start.
	Probe(ctx context.Context, nbdkit, plugin string) error
	// PluginHelp is the plugin's help text (its parameters).
	PluginHelp(ctx context.Context, nbdkit, plugin string) (string, error)
}

// SupervisorOptions configure the supervisor of real nbdkit processes.
type SupervisorOptions struct {
	// Place moves each new keeper (and so its nbdkit) where it outlives
	// the node plugin's container (nil: it stays in our cgroup). See
	// ServerPlacement.
	Place func(pid int) error
	// Logs receives the lines of every server's log file, started or
	// adopted, each prefixed with the volume. Without it each line is
	// logged through klog with the volume's handle as volume_id (see
	// volumeLog), so that `kubectl logs` of the node plugin shows them in
	// its --logging-format.
	Logs io.Writer
}

// serverLogLimit bounds a server's log file: the forwarder truncates it
// once it has forwarded more.
const serverLogLimit = 8 << 20

// earlierLogLines are forwarded from before the adoption of a server, as
// context.
const earlierLogLines = 20

// NewSupervisor returns the supervisor of real nbdkit processes, which
// leaves them in the node plugin's cgroup and forwards their logs through
// klog.
func NewSupervisor() Supervisor { return NewSupervisorWith(SupervisorOptions{}) }

// NewSupervisorWith returns the supervisor of real nbdkit processes.
func NewSupervisorWith(o SupervisorOptions) Supervisor {
	p := &procSupervisor{place: o.Place}
	if o.Logs != nil {
		p.logs = &nbdkit.LineWriter{W: o.Logs}
	}
	return p
}

// newNodeSupervisor is the supervisor the node options ask for.
func newNodeSupervisor(opts *Options) (Supervisor, error) {
	place, err := ServerPlacement(opts)
	if err != nil {
		return nil, err
	}
	return NewSupervisorWith(SupervisorOptions{Place: place}), nil
}

// ServerPlacement returns the hook that moves a volume server (nbdkit's
// keeper, nbdfuse) into the cgroup --server-cgroup names under
// --cgroup-root, or nil without --server-cgroup. It creates the cgroup and
// checks that it can move processes into it, so that a node plugin that
// cannot do it fails at start-up rather than at the first NodeStage.
func ServerPlacement(opts *Options) (func(pid int) error, error) {
	if opts.ServerCgroup == "" {
		return nil, nil
	}
	g, err := hostcgroup.Open(opts.CgroupRoot, opts.ServerCgroup)
	if err != nil {
		return nil, fmt.Errorf("--server-cgroup=%s under --cgroup-root=%s: %w (the node plugin needs the host's cgroup file system mounted there, writable: a privileged container with hostPID)",
			opts.ServerCgroup, opts.CgroupRoot, err)
	}
	return g.Place, nil
}

type procSupervisor struct {
	place func(pid int) error
	logs  io.Writer // nil: through klog
}

// Start starts nbdkit under its keeper, in their own process group, with
// output going to spec.LogFile, and waits until it serves.
func (p *procSupervisor) Start(ctx context.Context, spec nbdkitSpec) (server, error) {
	spec.Place = p.place
	srv, err := nbdkit.Start(ctx, spec)
	var ee *nbdkit.ExitError
	if errors.Is(err, nbdkit.ErrExited) && errors.As(err, &ee) && ee.Code == nbdkitExitNotOwner {
		return nil, fmt.Errorf("%w: nbdkit refused to take the volume back (resume_only): %s", errOwnedElsewhere, ee.Log)
	}
	if err != nil {
		return nil, err
	}
	p.forward(srv)
	return srv, nil
}

// Adopt finds a running nbdkit by its pidfile and checks that the process
// is nbdkit serving this socket (a pid may have been reused).
func (p *procSupervisor) Adopt(spec nbdkitSpec) (server, bool, error) {
	srv, ok, err := nbdkit.Adopt(spec)
	if !ok || err != nil {
		return nil, ok, err
	}
	p.forward(srv)
	return srv, true, nil
}

// forward copies the server's log lines to p.logs, or klog, until it
// exits.
func (p *procSupervisor) forward(srv *nbdkit.Server) {
	key := filepath.Base(filepath.Dir(srv.LogFile()))
	o := nbdkit.FollowOptions{Limit: serverLogLimit, Earlier: earlierLogLines}
	w := p.logs
	if w == nil {
		handle := key
		if store, vol, ok := cutKey(key); ok {
			handle = volumeID{Store: store, Vol: vol}.String()
		}
		w = volumeLog{volumeID: handle}
	} else {
		o.Prefix = "nbdkit " + key + ": "
	}
	go srv.FollowLog(w, o)
}

// volumeLog logs each line written to it (one line per Write, as Follow
// writes them) through klog, with the volume's handle as volume_id and
// source=nbdkit. nbdkit's "nbdkit: PLUGIN: LEVEL: " prefix becomes the
// severity (error lines are klog errors) and is stripped; other lines
// (nbdkit's own, the keeper's) are kept whole.
type volumeLog struct{ volumeID string }

func (l volumeLog) Write(p []byte) (int, error) {
	line := strings.TrimRight(string(p), "\r\n")
	earlier := false
	if rest, ok := strings.CutPrefix(line, "(earlier) "); ok {
		line, earlier = rest, true
	}
	msg, level := splitNbdkitLine(line)
	kv := []any{"volume_id", l.volumeID, "source", "nbdkit"}
	if earlier {
		kv = append(kv, "earlier", true) // written before this process adopted the server
	}
	switch level {
	case "error":
		klog.ErrorS(nil, msg, kv...)
	case "debug":
		klog.V(4).InfoS(msg, kv...)
	case "warning":
		klog.InfoS(msg, append(kv, "severity", "warning")...)
	default:
		klog.InfoS(msg, kv...)
	}
	return len(p), nil
}

// splitNbdkitLine splits "nbdkit: viperblock.8: error: text" (or, from
// nbdkit itself, "nbdkit: error: text") into the text and the level; other
// lines are returned whole, level "".
func splitNbdkitLine(line string) (msg, level string) {
	rest, ok := strings.CutPrefix(line, "nbdkit: ")
	if !ok {
		return line, ""
	}
	levelOf := func(s string) (string, string, bool) {
		for _, lv := range []string{"error", "warning", "info", "debug"} {
			if m, ok := strings.CutPrefix(s, lv+": "); ok {
				return m, lv, true
			}
		}
		return "", "", false
	}
	if m, lv, ok := levelOf(rest); ok {
		return m, lv
	}
	if _, rest, ok = strings.Cut(rest, ": "); ok { // the plugin's name (and thread)
		if m, lv, ok := levelOf(rest); ok {
			return m, lv
		}
	}
	return line, ""
}

// nbdkitExitNotOwner is the exit status of an nbdkit started with
// resume_only=true whose open was refused because another owner has the
// volume (the plugin's vbplugin.ExitNotOwner: keep the two equal; the
// driver cannot import the plugin's package). Start reports it as
// errOwnedElsewhere.
const nbdkitExitNotOwner = 77

// Probe reports whether nbdkit and the plugin are there to start.
func (p *procSupervisor) Probe(_ context.Context, nbdkitBin, plugin string) error {
	return nbdkit.Check(nbdkitBin, plugin)
}

// PluginHelp is `nbdkit PLUGIN --help`.
func (p *procSupervisor) PluginHelp(ctx context.Context, nbdkitBin, plugin string) (string, error) {
	return nbdkit.PluginHelp(ctx, nbdkitBin, plugin)
}
