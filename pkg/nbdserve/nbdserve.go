// Package nbdserve runs nbdkit as a supervised child process: it starts
// `nbdkit -f --unix SOCKET ... PLUGIN key=value...`, waits until nbdkit
// serves (its pidfile appears, which nbdkit writes once it accepts
// connections), and stops it with SIGTERM, which lets the viperblock plugin
// drain the volume before nbdkit exits.
//
// Secrets never go on nbdkit's command line (visible in ps): pass them in
// Config.Env, which the plugin reads (VBLOCK_STORE, the S3 credential
// variables).
package nbdserve

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
)

// Config describes one nbdkit server.
type Config struct {
	// Nbdkit is the nbdkit binary (default "nbdkit" on PATH).
	Nbdkit string
	// Plugin is the plugin: a path to a .so or a built-in plugin name.
	Plugin string
	// Params are the plugin's key=value parameters.
	Params []string
	// Socket is the Unix socket to serve on. A stale socket (nothing
	// listening) is removed first; the socket is removed after nbdkit exits.
	Socket string
	// SocketMode is applied to the socket once nbdkit serves (default 0600).
	SocketMode os.FileMode
	// Args are extra nbdkit options placed before the plugin, e.g. "-r",
	// "-v", "--filter=log", "--threads=32".
	Args []string
	// Env is added to this process's environment for nbdkit.
	Env []string
	// ExitWithParent asks nbdkit to exit (cleanly, as on SIGTERM) if this
	// process dies.
	ExitWithParent bool
	// Stdout and Stderr receive nbdkit's output (default: discarded; the
	// last 8 KiB of stderr are kept for error messages either way).
	Stdout, Stderr io.Writer
	// ReadyTimeout bounds the wait for nbdkit to serve (default 2 minutes:
	// opening a volume may replay a large WAL).
	ReadyTimeout time.Duration
}

// Server is a running nbdkit.
type Server struct {
	cfg     Config
	cmd     *exec.Cmd
	tmp     string
	stderr  *tail
	done    chan struct{}
	waitErr error // set before done closes
}

// ErrExited is returned by Start when nbdkit exits before it serves.
var ErrExited = errors.New("nbdserve: nbdkit exited before serving")

// Start starts nbdkit and returns once it serves on cfg.Socket. If ctx ends
// or nbdkit exits first, nbdkit is killed and the error includes the tail of
// its stderr.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Nbdkit == "" {
		cfg.Nbdkit = "nbdkit"
	}
	if cfg.Plugin == "" || cfg.Socket == "" {
		return nil, errors.New("nbdserve: Plugin and Socket are required")
	}
	if cfg.SocketMode == 0 {
		cfg.SocketMode = 0o600
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 2 * time.Minute
	}
	if err := removeStaleSocket(cfg.Socket); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "nbdserve-")
	if err != nil {
		return nil, err
	}
	pidfile := filepath.Join(tmp, "nbdkit.pid")
	args := []string{"-f", "--unix", cfg.Socket, "--pidfile", pidfile}
	if cfg.ExitWithParent {
		args = append(args, "--exit-with-parent")
	}
	args = append(args, cfg.Args...)
	args = append(args, cfg.Plugin)
	args = append(args, cfg.Params...)

	s := &Server{cfg: cfg, tmp: tmp, stderr: &tail{max: 8 << 10}, done: make(chan struct{})}
	s.cmd = exec.Command(cfg.Nbdkit, args...)
	s.cmd.Env = append(os.Environ(), cfg.Env...)
	s.cmd.Stdout = cfg.Stdout
	if cfg.Stderr != nil {
		s.cmd.Stderr = io.MultiWriter(cfg.Stderr, s.stderr)
	} else {
		s.cmd.Stderr = s.stderr
	}
	// Own process group: a terminal's ^C reaches only the supervisor, which
	// decides how to stop nbdkit.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		os.RemoveAll(tmp)
		return nil, fmt.Errorf("nbdserve: start %s: %w", cfg.Nbdkit, err)
	}
	go func() {
		s.waitErr = s.cmd.Wait()
		// Clean up before Done fires, so a caller that waited finds the
		// socket gone.
		os.Remove(cfg.Socket)
		os.RemoveAll(tmp)
		close(s.done)
	}()

	ctx, cancel := context.WithTimeout(ctx, cfg.ReadyTimeout)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if b, err := os.ReadFile(pidfile); err == nil && len(b) > 0 && b[len(b)-1] == '\n' {
			if err := os.Chmod(cfg.Socket, cfg.SocketMode); err != nil {
				s.Kill()
				return nil, fmt.Errorf("nbdserve: chmod socket: %w", err)
			}
			return s, nil
		}
		select {
		case <-s.done:
			return nil, fmt.Errorf("%w (%s)%s", ErrExited, exitString(s.waitErr), s.stderrSuffix())
		case <-ctx.Done():
			s.Kill()
			<-s.done
			return nil, fmt.Errorf("nbdserve: nbdkit did not serve on %s: %w%s", cfg.Socket, ctx.Err(), s.stderrSuffix())
		case <-tick.C:
		}
	}
}

func (s *Server) stderrSuffix() string {
	t := strings.TrimSpace(s.stderr.String())
	if t == "" {
		return ""
	}
	return ":\n" + t
}

// removeStaleSocket removes path if it is a socket nobody listens on.
func removeStaleSocket(path string) error {
	st, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if st.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("nbdserve: %s exists and is not a socket", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("nbdserve: %s: another server is already listening", path)
	}
	return os.Remove(path)
}

// Pid is nbdkit's process id.
func (s *Server) Pid() int { return s.cmd.Process.Pid }

// Socket is the Unix socket nbdkit serves on.
func (s *Server) Socket() string { return s.cfg.Socket }

// URI is the NBD URI of the export, e.g. for nbdcopy, nbdinfo or qemu.
func (s *Server) URI() string { return "nbd+unix:///?socket=" + s.cfg.Socket }

// Done is closed when nbdkit has exited.
func (s *Server) Done() <-chan struct{} { return s.done }

// Wait waits for nbdkit to exit and returns nil if it exited with status 0.
func (s *Server) Wait() error {
	<-s.done
	if s.waitErr != nil {
		return fmt.Errorf("nbdserve: nbdkit %s%s", exitString(s.waitErr), s.stderrSuffix())
	}
	return nil
}

// Signal sends sig to nbdkit.
func (s *Server) Signal(sig os.Signal) error {
	select {
	case <-s.done:
		return nil
	default:
	}
	return s.cmd.Process.Signal(sig)
}

// Kill kills nbdkit at once (SIGKILL): nothing is drained; flushed writes
// survive in the WAL.
func (s *Server) Kill() error { return s.Signal(syscall.SIGKILL) }

// Stop asks nbdkit to exit (SIGTERM: the plugin drains the volume) and
// waits. nbdkit (1.32) stops accepting connections at once but lets open
// connections run until their clients disconnect, so detach clients first.
// If ctx ends first, nbdkit is killed and Stop returns ctx's error.
func (s *Server) Stop(ctx context.Context) error {
	if err := s.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case <-s.done:
		return s.Wait()
	case <-ctx.Done():
		s.Kill()
		<-s.done
		return fmt.Errorf("nbdserve: nbdkit did not exit in time, killed: %w", ctx.Err())
	}
}

// Stderr returns the last few KiB nbdkit wrote to stderr.
func (s *Server) Stderr() string { return s.stderr.String() }

func exitString(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return "killed by " + ws.Signal().String()
		}
		return "exit status " + strconv.Itoa(ee.ExitCode())
	}
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// tail keeps the last max bytes written to it.
type tail struct {
	mu  sync.Mutex
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
