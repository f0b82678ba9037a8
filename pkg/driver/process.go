package driver

import (
	"bytes"
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

// nbdkitSpec describes the nbdkit server of one volume.
type nbdkitSpec struct {
	Nbdkit  string
	Plugin  string
	Socket  string   // Unix socket to serve on (mode 0600 once serving)
	Pidfile string   // nbdkit writes it once it serves; it finds the process after a restart
	LogFile string   // nbdkit's stdout and stderr (a file, not a pipe, so nbdkit outlives us)
	Params  []string // plugin parameters: never secrets
	Env     []string // VBLOCK_STORE=... (the store URL may reference a credentials file)
	Threads int
	Ready   time.Duration
}

// server is a running nbdkit: started by this process or adopted from an
// earlier node plugin process.
type server interface {
	Pid() int
	// Done is closed when the process has exited.
	Done() <-chan struct{}
	// Stop sends SIGTERM (the plugin drains the volume to the store, then
	// nbdkit exits) and waits. It returns an error if nbdkit exited with a
	// non-zero status (known only for a process this one started), or
	// ctx's error if ctx ends first, leaving nbdkit running.
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
}

// NewSupervisor returns the supervisor of real nbdkit processes.
func NewSupervisor() Supervisor { return procSupervisor{} }

type procSupervisor struct{}

// Start starts nbdkit in its own process group with its output going to
// spec.LogFile, so it survives the node plugin (a restarted plugin adopts
// it), and waits until it serves.
func (procSupervisor) Start(ctx context.Context, spec nbdkitSpec) (server, error) {
	if err := os.Remove(spec.Pidfile); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	if err := removeStaleSocket(spec.Socket); err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(spec.LogFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(logf, "---- %s starting nbdkit\n", time.Now().UTC().Format(time.RFC3339))
	logStart, _ := logf.Seek(0, io.SeekEnd)
	args := []string{"-f", "--unix", spec.Socket, "--pidfile", spec.Pidfile}
	if spec.Threads > 0 {
		args = append(args, "--threads", strconv.Itoa(spec.Threads))
	}
	args = append(args, spec.Plugin)
	args = append(args, spec.Params...)
	cmd := exec.Command(spec.Nbdkit, args...)
	cmd.Env = append(os.Environ(), spec.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	logf.Close()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", spec.Nbdkit, err)
	}
	p := &child{cmd: cmd, done: make(chan struct{}), spec: spec}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	ready := spec.Ready
	if ready <= 0 {
		ready = 2 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, ready)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if pid, ok := readPidfile(spec.Pidfile); ok && pid == cmd.Process.Pid {
			if err := os.Chmod(spec.Socket, 0o600); err != nil {
				p.Kill()
				<-p.done
				return nil, fmt.Errorf("chmod socket: %w", err)
			}
			return p, nil
		}
		select {
		case <-p.done:
			return nil, fmt.Errorf("nbdkit exited before serving (%s): %s", exitString(p.err), logTail(spec.LogFile, logStart))
		case <-ctx.Done():
			p.Kill()
			<-p.done
			return nil, fmt.Errorf("nbdkit did not serve within %s: %w: %s", ready, ctx.Err(), logTail(spec.LogFile, logStart))
		case <-tick.C:
		}
	}
}

// Adopt finds a running nbdkit by its pidfile and checks that the process
// is nbdkit serving this socket (a pid may have been reused).
func (procSupervisor) Adopt(spec nbdkitSpec) (server, bool, error) {
	pid, ok := readPidfile(spec.Pidfile)
	if !ok {
		return nil, false, nil
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil, false, nil // gone
	}
	args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	if len(args) == 0 || !strings.Contains(filepath.Base(args[0]), "nbdkit") || !contains(args, spec.Socket) {
		return nil, false, nil
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	// The process may have exited (a zombie has an empty cmdline, but check
	// again now that the pidfd pins the pid).
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err != nil || !bytes.Equal(b, cmdline) {
		unix.Close(fd)
		return nil, false, nil
	}
	a := &adopted{pid: pid, fd: fd, done: make(chan struct{})}
	go a.wait()
	return a, true, nil
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
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

// removeStaleSocket removes path if nothing listens on it.
func removeStaleSocket(path string) error {
	if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("%s: another server is already listening", path)
	}
	return os.Remove(path)
}

// logTail returns the end of a log file from offset from (at most 4 KiB).
func logTail(path string, from int64) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	if from > 0 && from <= int64(len(b)) {
		b = b[from:]
	}
	if len(b) > 4096 {
		b = b[len(b)-4096:]
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "(nbdkit printed nothing)"
	}
	return s
}

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

// child is an nbdkit this process started.
type child struct {
	cmd  *exec.Cmd
	spec nbdkitSpec
	done chan struct{}
	err  error // set before done closes
}

func (p *child) Pid() int              { return p.cmd.Process.Pid }
func (p *child) Done() <-chan struct{} { return p.done }
func (p *child) Adopted() bool         { return false }

func (p *child) signal(sig syscall.Signal) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	err := p.cmd.Process.Signal(sig)
	if errors.Is(err, os.ErrProcessDone) {
		return nil
	}
	return err
}

func (p *child) Kill() error { return p.signal(syscall.SIGKILL) }

func (p *child) Stop(ctx context.Context) error {
	if err := p.signal(syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	os.Remove(p.spec.Pidfile)
	if p.err != nil {
		return fmt.Errorf("nbdkit %s: %s", exitString(p.err), logTail(p.spec.LogFile, -1))
	}
	return nil
}

// adopted is an nbdkit found after a restart, watched through a pidfd (its
// exit status is not ours to collect).
type adopted struct {
	pid  int
	done chan struct{}
	mu   sync.Mutex // guards fd
	fd   int        // the pidfd; -1 once the process has exited
}

func (a *adopted) Pid() int              { return a.pid }
func (a *adopted) Done() <-chan struct{} { return a.done }
func (a *adopted) Adopted() bool         { return true }

func (a *adopted) wait() {
	fds := []unix.PollFd{{Fd: int32(a.fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n > 0 {
			break
		}
	}
	a.mu.Lock()
	unix.Close(a.fd)
	a.fd = -1
	close(a.done)
	a.mu.Unlock()
}

func (a *adopted) signal(sig unix.Signal) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.fd < 0 {
		return nil
	}
	err := unix.PidfdSendSignal(a.fd, sig, nil, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	return err
}

func (a *adopted) Kill() error { return a.signal(unix.SIGKILL) }

func (a *adopted) Stop(ctx context.Context) error {
	if err := a.signal(unix.SIGTERM); err != nil {
		return err
	}
	select {
	case <-a.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
