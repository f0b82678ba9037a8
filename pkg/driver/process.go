package driver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

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
	// adopted, each prefixed with the volume (default os.Stderr, so that
	// `kubectl logs` shows them).
	Logs io.Writer
}

// serverLogLimit bounds a server's log file: the forwarder truncates it
// once it has forwarded more.
const serverLogLimit = 8 << 20

// earlierLogLines are forwarded from before the adoption of a server, as
// context.
const earlierLogLines = 20

// NewSupervisor returns the supervisor of real nbdkit processes, which
// leaves them in the node plugin's cgroup and forwards their logs to
// stderr.
func NewSupervisor() Supervisor { return NewSupervisorWith(SupervisorOptions{}) }

// NewSupervisorWith returns the supervisor of real nbdkit processes.
func NewSupervisorWith(o SupervisorOptions) Supervisor {
	if o.Logs == nil {
		o.Logs = os.Stderr
	}
	return &procSupervisor{place: o.Place, logs: &nbdkit.LineWriter{W: o.Logs}}
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
	logs  io.Writer
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

// forward copies the server's log lines to p.logs until it exits.
func (p *procSupervisor) forward(srv *nbdkit.Server) {
	vol := filepath.Base(filepath.Dir(srv.LogFile()))
	go srv.FollowLog(p.logs, nbdkit.FollowOptions{
		Prefix: "nbdkit " + vol + ": ", Limit: serverLogLimit, Earlier: earlierLogLines,
	})
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
