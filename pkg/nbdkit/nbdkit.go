// Package nbdkit runs nbdkit servers: it is the one place the project starts,
// watches, stops and re-adopts nbdkit (the node plugin, `vblock serve` and
// the tests all go through it), with one set of rules.
//
// # Rules
//
//   - Before a start, a stale Unix socket (nothing accepts on it) is removed;
//     a socket some server still accepts on is refused.
//   - nbdkit always runs in the foreground (-f): its daemonising fork would
//     hang the Go runtime of the viperblock plugin. It writes a pidfile
//     (--pidfile) once it listens.
//   - Optionally (Config.Status) nbdkit runs under a keeper: a /bin/sh that
//     runs nbdkit as its child and records its exit status in the status
//     file. nbdkit's parent is then the keeper, not the caller, so the
//     caller may exit (or be restarted) while nbdkit serves on, and a new
//     caller learns from the status file how nbdkit exited.
//   - Config.Place, if set, is called with the pid of the process started
//     (the keeper, or nbdkit itself without one) right after the start; the
//     keeper waits for it before it starts nbdkit, so nbdkit starts wherever
//     Place put the keeper (e.g. a host cgroup outside the caller's
//     container, see package hostcgroup).
//   - Start returns once the server is ready: the pidfile is complete and
//     the socket (or TCP address) accepts a connection and sends the NBD
//     greeting. If nbdkit exits first, the error wraps ErrExited and an
//     *ExitError holding the exit status and the end of nbdkit's output; if
//     the context or Config.Ready ends first, nbdkit is killed.
//   - Stop sends SIGTERM (the viperblock plugin drains the volume to its
//     store before nbdkit exits) and waits for the exit, or for the context,
//     which leaves nbdkit running. Kill sends SIGKILL. Done closes once
//     nbdkit has exited and, for a server Start ran under the keeper, the
//     keeper has written the status file, so a restart or a removal of the
//     directory never races the old keeper's write.
//   - Adopt finds a server started earlier (by another process) from its
//     pidfile, and holds it through a pidfd once /proc/PID/cmdline shows
//     nbdkit serving that socket (before and after the pidfd is opened, so
//     a reused pid is never taken for it).
//
// # Files
//
// Pidfile (written by nbdkit): the decimal pid followed by "\n". A pidfile
// without the newline is still being written and is not read.
//
// Status file (written by the keeper, only with Config.Status): nbdkit's
// exit status as the shell reports it ($?) in decimal followed by "\n":
// 0..125 an exit code, 128+N killed by signal N. The keeper writes
// STATUS.tmp and renames it, so the file is never seen partial. Start
// removes the pidfile and the status file of an earlier run first.
//
// Log file (Config.LogFile): nbdkit's stdout and stderr, opened O_APPEND so
// that the file may be truncated while nbdkit writes (see Follow). Each
// start first appends a line "---- <RFC 3339 UTC time> starting nbdkit".
// A file, not a pipe, so that nbdkit outlives the caller. Without a log
// file, the output goes to Config.Output.
package nbdkit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Config describes one nbdkit server.
type Config struct {
	// Nbdkit is the nbdkit binary (default "nbdkit" on PATH).
	Nbdkit string
	// Plugin is the plugin: a path to a .so or a built-in plugin's name.
	Plugin string
	// Params are the plugin's key=value parameters. Never secrets: the
	// command line is visible to every user (ps); pass them in Env.
	Params []string
	// Socket is the Unix socket to serve on (mode SocketMode once
	// serving). Exactly one of Socket and Addr is set.
	Socket string
	// Addr is host:port to serve on over TCP instead (tests).
	Addr string
	// SocketMode is applied to Socket once nbdkit serves (default 0600).
	SocketMode os.FileMode
	// Args are extra nbdkit options placed before the plugin, e.g. "-r",
	// "-v", "--filter=log".
	Args []string
	// Threads is nbdkit's --threads (0: nbdkit's default).
	Threads int
	// Env is added to this process's environment for nbdkit.
	Env []string
	// Pidfile is nbdkit's pidfile, needed to Adopt the server later
	// (default: a private file, removed after nbdkit exits).
	Pidfile string
	// Status, if set, runs nbdkit under the keeper, which records nbdkit's
	// exit status in this file. It needs Pidfile.
	Status string
	// LogFile receives nbdkit's stdout and stderr (appended). Without it
	// they go to Output.
	LogFile string
	// Output receives nbdkit's output when there is no LogFile (default:
	// discarded; the last 8 KiB are kept for error messages either way).
	Output io.Writer
	// Wrapper is a command prefix for the keeper, e.g. a command that runs
	// it in another cgroup or scope. It needs Status.
	Wrapper []string
	// Place, if set, is called with the started process's pid (see the
	// package doc). If it fails, the process is killed and Start fails.
	Place func(pid int) error
	// ExitWithParent passes --exit-with-parent: nbdkit exits (as on
	// SIGTERM) when its parent dies. Its parent is the keeper if there is
	// one.
	ExitWithParent bool
	// Ready bounds the wait for nbdkit to serve (default 2 minutes: opening
	// a volume may replay a large WAL).
	Ready time.Duration
}

// Errors.
var (
	// ErrExited: nbdkit exited before it served (an *ExitError says how).
	ErrExited = errors.New("nbdkit exited before serving")
	// ErrInvalid marks a bad Config.
	ErrInvalid = errors.New("nbdkit: invalid configuration")
)

// ExitError describes how nbdkit exited.
type ExitError struct {
	// Code is the exit code, 128+N if killed by signal N, or -1 if unknown.
	Code int
	// Status describes it: "exit status 1", "killed by SIGKILL", ...
	Status string
	// Log is the end of nbdkit's output.
	Log string
}

func (e *ExitError) Error() string { return e.Status + ": " + e.Log }

// Server is a running nbdkit, started by Start or found by Adopt.
type Server struct {
	cfg      Config
	pid      int
	adopted  bool
	logStart int64     // offset in LogFile of this run's first output; -1 if unknown
	out      *tail     // the last output, without a LogFile
	cmd      *exec.Cmd // nbdkit itself when it is our child (no keeper)
	tmp      string    // private directory of the default pidfile
	done     chan struct{}
	waitErr  error // our child's exit (cmd.Wait); set before done closes

	mu sync.Mutex // guards fd
	fd int        // pidfd of nbdkit; -1 once it has exited
}

// keeperScript runs nbdkit as a child of a small shell, the keeper, and
// records its exit status. It first waits for its stdin to close: the
// caller closes it once Place has moved the keeper, so that nbdkit is
// forked where the keeper was put. $0 is the status file, "$@" the nbdkit
// command.
const keeperScript = `read -r gate; "$@" </dev/null; echo $? > "$0.tmp" && mv -f "$0.tmp" "$0"`

// command builds the command line: the keeper (with its wrapper) or nbdkit
// alone.
func (c *Config) command(pidfile string) []string {
	var args []string
	if c.Status != "" {
		args = append(args, c.Wrapper...)
		args = append(args, "/bin/sh", "-c", keeperScript, c.Status)
	}
	args = append(args, c.Nbdkit, "-f")
	if c.Socket != "" {
		args = append(args, "--unix", c.Socket)
	} else {
		host, port, _ := net.SplitHostPort(c.Addr)
		args = append(args, "-i", host, "-p", port)
	}
	args = append(args, "--pidfile", pidfile)
	if c.Threads > 0 {
		args = append(args, "--threads", strconv.Itoa(c.Threads))
	}
	if c.ExitWithParent {
		args = append(args, "--exit-with-parent")
	}
	args = append(args, c.Args...)
	args = append(args, c.Plugin)
	return append(args, c.Params...)
}

func (c *Config) complete() error {
	c.Nbdkit = binary(c.Nbdkit)
	if c.SocketMode == 0 {
		c.SocketMode = 0o600
	}
	if c.Ready <= 0 {
		c.Ready = 2 * time.Minute
	}
	switch {
	case c.Plugin == "":
		return fmt.Errorf("%w: no plugin", ErrInvalid)
	case (c.Socket == "") == (c.Addr == ""):
		return fmt.Errorf("%w: want a Unix socket or a TCP address (one of them)", ErrInvalid)
	case c.Status != "" && c.Pidfile == "":
		return fmt.Errorf("%w: the keeper (Status) needs a Pidfile", ErrInvalid)
	case len(c.Wrapper) > 0 && c.Status == "":
		return fmt.Errorf("%w: a Wrapper needs the keeper (Status)", ErrInvalid)
	}
	if c.Addr != "" {
		if _, _, err := net.SplitHostPort(c.Addr); err != nil {
			return fmt.Errorf("%w: address %q: %v", ErrInvalid, c.Addr, err)
		}
	}
	return nil
}

// Start starts nbdkit and returns once it serves (see the package doc).
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if err := cfg.complete(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, logStart: -1, done: make(chan struct{}), fd: -1}
	pidfile := cfg.Pidfile
	if pidfile == "" {
		tmp, err := os.MkdirTemp("", "nbdkit-")
		if err != nil {
			return nil, err
		}
		s.tmp = tmp
		pidfile = filepath.Join(tmp, "nbdkit.pid")
		s.cfg.Pidfile = pidfile
	}
	fail := func(err error) (*Server, error) {
		if s.tmp != "" {
			os.RemoveAll(s.tmp)
		}
		return nil, err
	}
	for _, f := range []string{cfg.Pidfile, cfg.Status} {
		if f == "" {
			continue
		}
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fail(fmt.Errorf("nbdkit: %w", err))
		}
	}
	if cfg.Socket != "" {
		if err := removeStaleSocket(cfg.Socket); err != nil {
			return fail(err)
		}
	}

	args := s.cfg.command(pidfile)
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), cfg.Env...)
	cmd.Dir = "/"
	// Its own process group: a terminal's ^C or a signal to the caller's
	// group reaches only the caller, which decides how to stop nbdkit.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if cfg.LogFile != "" {
		logf, err := os.OpenFile(cfg.LogFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return fail(fmt.Errorf("nbdkit: %w", err))
		}
		defer logf.Close()
		fmt.Fprintf(logf, "---- %s starting nbdkit\n", time.Now().UTC().Format(time.RFC3339))
		s.logStart, _ = logf.Seek(0, io.SeekEnd)
		cmd.Stdout, cmd.Stderr = logf, logf
	} else {
		s.out = &tail{max: 8 << 10}
		var w io.Writer = s.out
		if cfg.Output != nil {
			w = io.MultiWriter(cfg.Output, s.out)
		}
		cmd.Stdout, cmd.Stderr = w, w
	}
	var gate *os.File
	if cfg.Status != "" {
		r, w, err := os.Pipe()
		if err != nil {
			return fail(fmt.Errorf("nbdkit: %w", err))
		}
		defer r.Close()
		cmd.Stdin, gate = r, w
		defer func() {
			if gate != nil {
				gate.Close()
			}
		}()
	}
	if err := cmd.Start(); err != nil {
		return fail(fmt.Errorf("nbdkit: start %s: %w", args[0], err))
	}
	exited := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(exited)
	}()
	killed := func(err error) (*Server, error) {
		// The process group: the keeper and nbdkit, pidfile or not.
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Process.Kill()
		if pid, ok := readPidfile(pidfile); ok && cfg.Status != "" {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		<-exited
		return fail(err)
	}
	if cfg.Place != nil {
		if err := cfg.Place(cmd.Process.Pid); err != nil {
			return killed(fmt.Errorf("nbdkit: placing pid %d: %w", cmd.Process.Pid, err))
		}
	}
	if gate != nil {
		gate.Close() // the keeper starts nbdkit now
		gate = nil
	}
	if cfg.Status == "" {
		s.cmd = cmd
	}

	ctx, cancel := context.WithTimeout(ctx, cfg.Ready)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if pid, ok := readPidfile(pidfile); ok && s.accepting() {
			fd, err := unix.PidfdOpen(pid, 0)
			if err != nil {
				return killed(fmt.Errorf("nbdkit: pidfd_open %d: %w", pid, err))
			}
			s.pid, s.fd = pid, fd
			if cfg.Socket != "" {
				if err := os.Chmod(cfg.Socket, s.cfg.SocketMode); err != nil {
					unix.Close(fd)
					return killed(fmt.Errorf("nbdkit: chmod socket: %w", err))
				}
			}
			if s.cmd != nil {
				go func() {
					<-exited
					s.waitErr = waitErr
					s.exited()
				}()
			} else {
				go s.watch(exited)
			}
			return s, nil
		}
		select {
		case <-exited:
			ee := &ExitError{Code: -1, Status: "exit status unknown", Log: s.Output()}
			if cfg.Status != "" {
				ee.Code, ee.Status = readStatus(cfg.Status, 0)
			} else {
				ee.Code, ee.Status = exitStatus(waitErr)
			}
			return fail(fmt.Errorf("%w: %w", ErrExited, ee))
		case <-ctx.Done():
			return killed(fmt.Errorf("nbdkit did not serve on %s within %s: %w: %s", s.where(), cfg.Ready, ctx.Err(), s.Output()))
		case <-tick.C:
		}
	}
}

// Adopt finds the nbdkit serving cfg.Socket from cfg.Pidfile, if it still
// runs. ok is false if there is none (no pidfile, the process is gone, or
// the pid now belongs to another process).
func Adopt(cfg Config) (s *Server, ok bool, err error) {
	if err := cfg.complete(); err != nil {
		return nil, false, err
	}
	if cfg.Socket == "" || cfg.Pidfile == "" {
		return nil, false, fmt.Errorf("%w: Adopt needs a Socket and a Pidfile", ErrInvalid)
	}
	pid, ok := readPidfile(cfg.Pidfile)
	if !ok || !isNbdkitFor(pid, cfg.Socket) {
		return nil, false, nil
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("nbdkit: pidfd_open %d: %w", pid, err)
	}
	// The pid could have been reused between the check and pidfd_open:
	// check again now that the pidfd pins it.
	if !isNbdkitFor(pid, cfg.Socket) {
		unix.Close(fd)
		return nil, false, nil
	}
	s = &Server{cfg: cfg, pid: pid, adopted: true, logStart: -1, fd: fd, done: make(chan struct{})}
	if fi, err := os.Stat(cfg.LogFile); cfg.LogFile != "" && err == nil {
		s.logStart = fi.Size() // what it logs from now on is new
	}
	go s.watch(nil)
	return s, true, nil
}

// Pid is nbdkit's process id.
func (s *Server) Pid() int { return s.pid }

// Adopted reports a server found by Adopt.
func (s *Server) Adopted() bool { return s.adopted }

// Socket is the Unix socket nbdkit serves on ("" for TCP).
func (s *Server) Socket() string { return s.cfg.Socket }

// URI is the NBD URI of the export, e.g. for nbdcopy, nbdinfo or qemu.
func (s *Server) URI() string {
	if s.cfg.Socket != "" {
		return "nbd+unix:///?socket=" + s.cfg.Socket
	}
	return "nbd://" + s.cfg.Addr
}

// LogFile is the server's log file ("" if its output goes elsewhere).
func (s *Server) LogFile() string { return s.cfg.LogFile }

// Done is closed when nbdkit has exited and, for a server started by
// Start under the keeper, the keeper has recorded its status (see watch).
func (s *Server) Done() <-chan struct{} { return s.done }

// Signal sends sig to nbdkit (nothing once it has exited).
func (s *Server) Signal(sig syscall.Signal) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fd < 0 {
		return nil
	}
	err := unix.PidfdSendSignal(s.fd, sig, nil, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	return err
}

// Kill kills nbdkit at once (SIGKILL): nothing is drained; flushed writes
// survive in the WAL.
func (s *Server) Kill() error { return s.Signal(syscall.SIGKILL) }

// Stop asks nbdkit to exit (SIGTERM: the viperblock plugin drains the
// volume) and waits, then returns what Wait returns. nbdkit stops
// accepting connections at once but lets open connections run until their
// clients disconnect, so detach clients first. If ctx ends first, Stop
// returns ctx's error and nbdkit keeps running (and draining).
func (s *Server) Stop(ctx context.Context) error {
	if err := s.Signal(syscall.SIGTERM); err != nil {
		return fmt.Errorf("nbdkit: %w", err)
	}
	select {
	case <-s.done:
		return s.Wait()
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Wait waits for nbdkit to exit and returns nil if it exited with status
// 0, else an error wrapping *ExitError. An adopted server without a status
// file exits with an unknown status, reported as nil.
func (s *Server) Wait() error {
	<-s.done
	var code int
	var st string
	switch {
	case s.cmd != nil:
		code, st = exitStatus(s.waitErr)
	case s.cfg.Status != "":
		// The keeper writes the status right after nbdkit exits (an echo
		// and an mv): allow a loaded machine time for that.
		code, st = readStatus(s.cfg.Status, 15*time.Second)
	default:
		return nil
	}
	if code == 0 {
		return nil
	}
	return fmt.Errorf("nbdkit: %w", &ExitError{Code: code, Status: st, Log: s.Output()})
}

// Output returns the end of nbdkit's output (at most 4 KiB): of this run
// for a started server, of the log file for an adopted one.
func (s *Server) Output() string {
	var t string
	if s.out != nil {
		t = s.out.String()
	} else {
		t = logTail(s.cfg.LogFile, s.logStart)
	}
	t = strings.TrimSpace(t)
	if len(t) > 4096 {
		t = t[len(t)-4096:]
	}
	if t == "" {
		return "(nbdkit printed nothing)"
	}
	return t
}

func (s *Server) where() string {
	if s.cfg.Socket != "" {
		return s.cfg.Socket
	}
	return s.cfg.Addr
}

// accepting reports whether the server accepts a connection and answers
// the NBD handshake.
func (s *Server) accepting() bool {
	network, addr := "unix", s.cfg.Socket
	if addr == "" {
		network, addr = "tcp", s.cfg.Addr
	}
	_, serving := probe(network, addr)
	return serving
}

// probe connects to addr and, if it is an NBD server, ends the handshake
// as a client should: NBD_OPT_ABORT, then it reads the reply. A probe that
// just closed its connection would make nbdkit log an error about a client
// gone mid-handshake, and would leave nbdkit accepting a connection after
// the probe returned: nbdkit counts a connection's thread only once the
// thread runs, so a SIGTERM in that window lets nbdkit exit under a
// running connection thread, and it dies of SIGSEGV. Once the server has
// sent its greeting, its thread is counted and nbdkit waits for it.
func probe(network, addr string) (connected, serving bool) {
	c, err := net.DialTimeout(network, addr, time.Second)
	if err != nil {
		return false, false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	// Server: "NBDMAGIC", "IHAVEOPT", 16-bit handshake flags.
	b := make([]byte, 18)
	if _, err := io.ReadFull(c, b); err != nil || string(b[:16]) != "NBDMAGICIHAVEOPT" {
		return true, false
	}
	// Client: flags (fixed newstyle, no zeroes), then option NBD_OPT_ABORT
	// (2) with no data.
	req := []byte{0, 0, 0, 3, 'I', 'H', 'A', 'V', 'E', 'O', 'P', 'T', 0, 0, 0, 2, 0, 0, 0, 0}
	if _, err := c.Write(req); err != nil {
		return true, false
	}
	// The server acknowledges (a 20-byte option reply) and closes; an
	// older one may close at once. Either way it is serving.
	io.ReadFull(c, make([]byte, 20))
	return true, true
}

// watch closes done when the pidfd reports nbdkit's exit and, for a
// server started here under the keeper, once the keeper (whose exit
// closes keeper) has recorded the status too: a caller that then starts
// a new server, or removes the directory, never races the old keeper's
// write of its status file. The keeper writes it at once; should it (or
// its wrapper) linger, done closes after keeperGrace anyway.
func (s *Server) watch(keeper <-chan struct{}) {
	defer s.exited()
	s.waitPidfd()
	if keeper != nil {
		t := time.NewTimer(keeperGrace)
		defer t.Stop()
		select {
		case <-keeper:
		case <-t.C:
		}
	}
}

// keeperGrace bounds watch's wait for the keeper after nbdkit's exit.
const keeperGrace = 15 * time.Second

// waitPidfd returns when the pidfd reports the process's exit.
func (s *Server) waitPidfd() {
	fds := []unix.PollFd{{Fd: int32(s.fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n > 0 {
			break
		}
	}
}

// exited releases the pidfd and marks the process gone. A private pidfile
// goes with it, and the socket of a server that was our child (nothing
// else can adopt it).
func (s *Server) exited() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fd < 0 {
		return
	}
	unix.Close(s.fd)
	s.fd = -1
	if s.tmp != "" {
		os.RemoveAll(s.tmp)
		if s.cfg.Socket != "" {
			os.Remove(s.cfg.Socket)
		}
	}
	close(s.done)
}

// exitStatus describes the exit of our child.
func exitStatus(err error) (int, string) {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal()), "killed by " + unix.SignalName(ws.Signal())
		}
		return ee.ExitCode(), "exit status " + strconv.Itoa(ee.ExitCode())
	}
	if err != nil {
		return -1, err.Error()
	}
	return 0, "exit status 0"
}

// readStatus waits up to wait for the keeper's status file and returns
// the exit code it records and its description.
func readStatus(path string, wait time.Duration) (int, string) {
	deadline := time.Now().Add(wait)
	for {
		b, err := os.ReadFile(path)
		if err == nil {
			n, err := strconv.Atoi(strings.TrimSpace(string(b)))
			switch {
			case err != nil:
				return -1, fmt.Sprintf("unreadable exit status %q", b)
			case n > 128:
				return n, "killed by " + unix.SignalName(syscall.Signal(n-128))
			default:
				return n, "exit status " + strconv.Itoa(n)
			}
		}
		if time.Now().After(deadline) {
			return -1, "exit status unknown (no status file " + path + ")"
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// readPidfile returns the pid in a complete pidfile.
func readPidfile(path string) (int, bool) {
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 || b[len(b)-1] != '\n' {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, false
	}
	return pid, true
}

// isNbdkitFor reports whether pid is an nbdkit serving socket.
func isNbdkitFor(pid int, socket string) bool {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	// argv[0] is nbdkit; argv[1] when an interpreter runs a wrapper script.
	named := false
	for i := 0; i < len(args) && i < 2; i++ {
		named = named || strings.Contains(filepath.Base(args[i]), "nbdkit")
	}
	if !named {
		return false
	}
	for i, a := range args {
		if a == "--unix="+socket || a == "-U"+socket || ((a == "--unix" || a == "-U") && i+1 < len(args) && args[i+1] == socket) {
			return true
		}
	}
	return false
}

// removeStaleSocket removes path if nothing accepts connections on it.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("nbdkit: %w", err)
	}
	if fi.IsDir() {
		return fmt.Errorf("nbdkit: socket path %s is a directory", path)
	}
	if fi.Mode()&os.ModeSocket != 0 {
		// Anything that accepts is a live server; the probe ends an NBD
		// server's handshake properly (see probe).
		if connected, _ := probe("unix", path); connected {
			return fmt.Errorf("nbdkit: %s: another server is already listening", path)
		}
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("nbdkit: removing stale socket: %w", err)
	}
	return nil
}

// LogTail returns the end of a log file from offset from (at most 4 KiB;
// all of it if from is negative or beyond the end, as after a
// truncation), trimmed, for error messages.
func LogTail(path string, from int64) string {
	t := strings.TrimSpace(logTail(path, from))
	if t == "" {
		return "(nbdkit printed nothing)"
	}
	return t
}

// logTail returns the end of a log file from offset from (at most 4 KiB;
// all of it if from is negative or beyond the end).
func logTail(path string, from int64) string {
	f, err := os.Open(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	size := fi.Size()
	if from < 0 || from > size {
		from = 0
	}
	if size-from > 4096 {
		from = size - 4096
	}
	b := make([]byte, size-from)
	n, _ := f.ReadAt(b, from)
	return string(b[:n])
}

// tail keeps the last max bytes written to it.
type tail struct {
	mu  sync.Mutex // guards buf
	max int
	buf []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

// Check reports whether the nbdkit binary and the plugin file exist, the
// way Start would find them (nbdkit "" is "nbdkit" on PATH).
func Check(nbdkitBin, plugin string) error {
	if _, err := exec.LookPath(binary(nbdkitBin)); err != nil {
		return fmt.Errorf("nbdkit: %w", err)
	}
	if _, err := os.Stat(plugin); err != nil {
		return fmt.Errorf("plugin: %w", err)
	}
	return nil
}

// PluginHelp is `nbdkit PLUGIN --help`: nbdkit's and the plugin's
// parameters. It returns what was printed even when nbdkit fails.
func PluginHelp(ctx context.Context, nbdkitBin, plugin string) (string, error) {
	nbdkitBin = binary(nbdkitBin)
	out, err := exec.CommandContext(ctx, nbdkitBin, plugin, "--help").CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s --help: %w", nbdkitBin, plugin, err)
	}
	return string(out), nil
}

// binary is the nbdkit binary to run: name, or "nbdkit" on PATH.
func binary(name string) string {
	if name == "" {
		return "nbdkit"
	}
	return name
}
