package driver

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

// nbdkitSpec describes the nbdkit server of one volume.
type nbdkitSpec struct {
	Nbdkit  string
	Plugin  string
	Socket  string   // Unix socket to serve on (mode 0600 once serving)
	Pidfile string   // nbdkit writes it once it serves; it finds the process after a restart
	Status  string   // the keeper writes nbdkit's exit status here
	LogFile string   // nbdkit's stdout and stderr (a file, not a pipe, so nbdkit outlives us)
	Params  []string // plugin parameters: never secrets
	Env     []string // VBLOCK_STORE=... (the store URL may reference a credentials file)
	Threads int
	Ready   time.Duration
	// Wrapper is a command prefix for the keeper, e.g. systemd-run
	// --scope --collect --quiet --, so it runs outside the node plugin's
	// container and cgroup.
	Wrapper []string
}

// server is a running nbdkit: started by this process or adopted from an
// earlier node plugin process.
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
}

// NewSupervisor returns the supervisor of real nbdkit processes.
func NewSupervisor() Supervisor { return procSupervisor{} }

type procSupervisor struct{}

// keeperScript runs nbdkit as a child of a small shell, the keeper, and
// records its exit status. nbdkit -f sets PR_SET_PDEATHSIG(SIGTERM): it
// stops serving when its parent dies. Its parent is the keeper, not the
// node plugin, so a restart of the node plugin leaves it serving; and the
// keeper's status file tells a restarted node plugin how nbdkit exited.
// $0 is the status file, "$@" the nbdkit command.
const keeperScript = `"$@"; echo $? > "$0.tmp" && mv -f "$0.tmp" "$0"`

// Start starts nbdkit under its keeper, in their own process group, with
// output going to spec.LogFile, and waits until it serves.
func (procSupervisor) Start(ctx context.Context, spec nbdkitSpec) (server, error) {
	for _, f := range []string{spec.Pidfile, spec.Status} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
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
	args := append([]string{}, spec.Wrapper...)
	args = append(args, "/bin/sh", "-c", keeperScript, spec.Status, spec.Nbdkit, "-f", "--unix", spec.Socket, "--pidfile", spec.Pidfile)
	if spec.Threads > 0 {
		args = append(args, "--threads", strconv.Itoa(spec.Threads))
	}
	args = append(args, spec.Plugin)
	args = append(args, spec.Params...)
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), spec.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	logf.Close()
	if err != nil {
		return nil, fmt.Errorf("start nbdkit: %w", err)
	}
	keeperDone := make(chan struct{})
	go func() {
		cmd.Wait()
		close(keeperDone)
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
		if pid, ok := readPidfile(spec.Pidfile); ok {
			p, err := watch(pid, spec, false)
			if err != nil {
				return nil, err
			}
			if err := os.Chmod(spec.Socket, 0o600); err != nil {
				p.Kill()
				<-p.done
				return nil, fmt.Errorf("chmod socket: %w", err)
			}
			return p, nil
		}
		select {
		case <-keeperDone:
			if code, ok := readExitCode(spec.Status, 0); ok && code == nbdkitExitNotOwner {
				return nil, fmt.Errorf("%w: nbdkit refused to take the volume back (resume_only): %s", errOwnedElsewhere, logTail(spec.LogFile, logStart))
			}
			return nil, fmt.Errorf("nbdkit exited before serving (%s): %s", readStatus(spec.Status, 0), logTail(spec.LogFile, logStart))
		case <-ctx.Done():
			cmd.Process.Kill()
			if pid, ok := readPidfile(spec.Pidfile); ok {
				syscall.Kill(pid, syscall.SIGKILL)
			}
			return nil, fmt.Errorf("nbdkit did not serve within %s: %w: %s", ready, ctx.Err(), logTail(spec.LogFile, logStart))
		case <-tick.C:
		}
	}
}

// Adopt finds a running nbdkit by its pidfile and checks that the process
// is nbdkit serving this socket (a pid may have been reused).
func (procSupervisor) Adopt(spec nbdkitSpec) (server, bool, error) {
	pid, ok := readPidfile(spec.Pidfile)
	if !ok || !isNbdkitFor(pid, spec.Socket) {
		return nil, false, nil
	}
	p, err := watch(pid, spec, true)
	if errors.Is(err, unix.ESRCH) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	// The pid could have been reused between the check and pidfd_open:
	// check again now that the pidfd pins it.
	if !isNbdkitFor(pid, spec.Socket) {
		p.close()
		return nil, false, nil
	}
	return p, true, nil
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
	return named && contains(args, socket)
}

// nbdkitExitNotOwner is the exit status of an nbdkit started with
// resume_only=true whose open was refused because another owner has the
// volume (the plugin's vbplugin.ExitNotOwner: keep the two equal; the
// driver cannot import the plugin's package). Start reports it as
// errOwnedElsewhere.
const nbdkitExitNotOwner = 77

// readStatus waits up to wait for the keeper's status file and describes
// the exit status ("" for 0).
func readStatus(path string, wait time.Duration) string {
	n, ok := readExitCode(path, wait)
	switch {
	case !ok:
		return "exit status unknown"
	case n < 0:
		return "unreadable exit status"
	case n == 0:
		return ""
	case n > 128:
		return "killed by " + unix.SignalName(syscall.Signal(n-128))
	default:
		return "exit status " + strconv.Itoa(n)
	}
}

// readExitCode waits up to wait for the keeper's status file and returns
// the status it records (-1 if unreadable); ok is false if there is none.
func readExitCode(path string, wait time.Duration) (code int, ok bool) {
	deadline := time.Now().Add(wait)
	for {
		b, err := os.ReadFile(path)
		if err == nil {
			n, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil {
				return -1, true
			}
			return n, true
		}
		if time.Now().After(deadline) {
			return 0, false
		}
		time.Sleep(20 * time.Millisecond)
	}
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

// proc is a running nbdkit, watched through a pidfd (it is the keeper's
// child, not ours).
type proc struct {
	pid     int
	spec    nbdkitSpec
	adopted bool
	done    chan struct{}
	mu      sync.Mutex // guards fd
	fd      int        // the pidfd; -1 once the process has exited
}

// watch opens a pidfd for pid and closes done when the process exits.
func watch(pid int, spec nbdkitSpec, adopted bool) (*proc, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	p := &proc{pid: pid, spec: spec, adopted: adopted, fd: fd, done: make(chan struct{})}
	go p.wait()
	return p, nil
}

func (p *proc) Pid() int              { return p.pid }
func (p *proc) Done() <-chan struct{} { return p.done }
func (p *proc) Adopted() bool         { return p.adopted }

func (p *proc) wait() {
	fds := []unix.PollFd{{Fd: int32(p.fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n > 0 {
			break
		}
	}
	p.close()
}

// close releases the pidfd and marks the process gone.
func (p *proc) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fd >= 0 {
		unix.Close(p.fd)
		p.fd = -1
		close(p.done)
	}
}

func (p *proc) signal(sig unix.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fd < 0 {
		return nil
	}
	err := unix.PidfdSendSignal(p.fd, sig, nil, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	return err
}

func (p *proc) Kill() error { return p.signal(unix.SIGKILL) }

func (p *proc) Stop(ctx context.Context) error {
	if err := p.signal(unix.SIGTERM); err != nil {
		return err
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	// The keeper writes the status right after nbdkit exits (an echo and
	// an mv): allow a loaded node time for that.
	if st := readStatus(p.spec.Status, 15*time.Second); st != "" {
		return fmt.Errorf("nbdkit %s: %s", st, logTail(p.spec.LogFile, -1))
	}
	return nil
}
