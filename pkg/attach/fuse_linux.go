//go:build linux

package attach

// nbdfuse + loop: nbdfuse StateDir/<ID>/mnt/disk (a FUSE file showing the
// export), losetup --sizelimit SIZE --direct-io=on on that file.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func (a *attacher) attachFuse(ctx context.Context, exp Export) (dev Device, err error) {
	// Ask the server first: a missing socket or unknown export gives a
	// clear error here, and we learn the size nbdfuse will see.
	info, err := Probe(ctx, exp)
	if err != nil {
		return Device{}, err
	}
	size := exp.Size
	if size == 0 {
		size = info.Size &^ 511
	}
	if size == 0 || size > info.Size {
		return Device{}, fmt.Errorf("%w: size %d but the export has %d bytes (for nbdfuse, start the server with a virtual size at least the volume's largest size)", ErrInvalid, size, info.Size)
	}
	ro := exp.ReadOnly || info.ReadOnly()

	dir := a.dir(exp.ID)
	mnt := filepath.Join(dir, "mnt")
	st := &state{
		Kind: KindNbdfuse, ID: exp.ID, Socket: exp.Socket, Addr: exp.Addr, Name: exp.Name,
		ReadOnly: ro, Size: size, Mountpoint: mnt, File: filepath.Join(mnt, "disk"),
		ExportSize: info.Size, Index: -1,
	}
	if err := os.MkdirAll(mnt, 0o700); err != nil {
		return Device{}, fmt.Errorf("attach: %w", err)
	}
	if err := a.writeState(st); err != nil {
		return Device{}, err
	}
	defer func() {
		if err != nil {
			// Best effort: leave nothing behind (or a record for Detach).
			cctx, cancel := context.WithTimeout(context.Background(), a.o.Timeout)
			defer cancel()
			if terr := a.teardownFuse(cctx, st); terr != nil {
				err = fmt.Errorf("%w (cleanup: %v)", err, terr)
			}
		}
	}()

	if err := a.startNbdfuse(ctx, st, exp, ro); err != nil {
		return Device{}, err
	}
	if err := a.writeState(st); err != nil {
		return Device{}, err
	}
	fi, err := os.Stat(st.File)
	if err != nil {
		return Device{}, fmt.Errorf("attach: nbdfuse file: %w", err)
	}
	st.ExportSize = fi.Size()
	if size > st.ExportSize {
		return Device{}, fmt.Errorf("%w: size %d but nbdfuse shows %d bytes", ErrInvalid, size, st.ExportSize)
	}

	loop, dio, err := a.losetup(ctx, st.File, size, ro)
	if err != nil {
		return Device{}, err
	}
	st.Loop, st.DirectIO = loop, dio
	if err := a.writeState(st); err != nil {
		return Device{}, err
	}
	got, err := blockSize(loop)
	if err != nil {
		return Device{}, fmt.Errorf("attach: %w", err)
	}
	if got != size {
		return Device{}, fmt.Errorf("attach: %s shows %d bytes, want %d", loop, got, size)
	}
	return st.device(), nil
}

// startNbdfuse runs nbdfuse as a daemon in its own session and waits until
// it serves the file (its pidfile appears and the file has a size).
func (a *attacher) startNbdfuse(ctx context.Context, st *state, exp Export, ro bool) error {
	dir := a.dir(st.ID)
	pidfile := filepath.Join(dir, "nbdfuse.pid")
	os.Remove(pidfile)
	args := append([]string{}, a.o.Wrapper...)
	args = append(args, a.o.Nbdfuse)
	if ro {
		args = append(args, "-r")
	}
	args = append(args, "-P", pidfile)
	args = append(args, a.o.NbdfuseArgs...)
	args = append(args, st.File)
	switch {
	case exp.Name != "" && exp.Socket != "":
		args = append(args, "nbd+unix:///"+url.PathEscape(exp.Name)+"?socket="+url.QueryEscape(exp.Socket))
	case exp.Name != "":
		args = append(args, "nbd://"+exp.Addr+"/"+url.PathEscape(exp.Name))
	case exp.Socket != "":
		args = append(args, "--unix", exp.Socket)
	default:
		host, port, err := net.SplitHostPort(exp.Addr)
		if err != nil {
			return fmt.Errorf("%w: address %q: %v", ErrInvalid, exp.Addr, err)
		}
		args = append(args, "--tcp", host, port)
	}
	logPath := filepath.Join(dir, "nbdfuse.log")
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("attach: %w", err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "%s attach: %s\n", time.Now().Format(time.RFC3339), strings.Join(args, " "))
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = "/"
	// Its own session: a signal to the caller's process group or a
	// hangup of its terminal does not reach nbdfuse.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("attach: starting nbdfuse: %w", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }() // reaps it whenever it exits
	if a.o.Place != nil {
		if err := a.o.Place(cmd.Process.Pid); err != nil {
			cmd.Process.Kill()
			return fmt.Errorf("attach: placing nbdfuse: %w", err)
		}
	}

	deadline := time.Now().Add(a.o.Timeout)
	for {
		if b, err := os.ReadFile(pidfile); err == nil && len(bytes.TrimSpace(b)) > 0 {
			pid, err := strconv.Atoi(string(bytes.TrimSpace(b)))
			if err != nil {
				return fmt.Errorf("attach: nbdfuse pidfile %q", b)
			}
			if fi, err := os.Stat(st.File); err == nil && fi.Size() > 0 {
				start, _, ok := procStart(pid)
				if !ok {
					return fmt.Errorf("attach: nbdfuse (pid %d) exited: %s", pid, logTail(logPath))
				}
				if a.o.Place != nil && pid != cmd.Process.Pid {
					// nbdfuse daemonised (or a wrapper started it): make
					// sure the serving process is placed too.
					if err := a.o.Place(pid); err != nil {
						syscall.Kill(pid, syscall.SIGKILL)
						return fmt.Errorf("attach: placing nbdfuse: %w", err)
					}
				}
				st.PID, st.PIDStart = pid, start
				return nil
			}
		}
		select {
		case <-exited:
			if len(a.o.Wrapper) == 0 {
				return fmt.Errorf("attach: nbdfuse exited before serving (%v): %s", cmd.ProcessState, logTail(logPath))
			}
			exited = nil // a wrapper may exit while nbdfuse runs on
		case <-ctx.Done():
			cmd.Process.Kill()
			return fmt.Errorf("attach: waiting for nbdfuse: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			return fmt.Errorf("attach: nbdfuse not serving after %v: %s", a.o.Timeout, logTail(logPath))
		}
	}
}

// losetup attaches file to a free loop device limited to size bytes.
func (a *attacher) losetup(ctx context.Context, file string, size int64, ro bool) (dev string, dio bool, err error) {
	run := func(dioOn bool) (string, error) {
		args := []string{"--find", "--show", "--sizelimit", strconv.FormatInt(size, 10)}
		if ro {
			args = append(args, "--read-only")
		}
		if dioOn {
			args = append(args, "--direct-io=on")
		}
		args = append(args, file)
		cctx, cancel := context.WithTimeout(ctx, a.o.Timeout)
		defer cancel()
		var out, errb bytes.Buffer
		cmd := exec.CommandContext(cctx, a.o.Losetup, args...)
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Run(); err != nil {
			return "", fmt.Errorf("attach: losetup %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
		}
		dev := strings.TrimSpace(out.String())
		if !strings.HasPrefix(dev, "/dev/loop") {
			return "", fmt.Errorf("attach: losetup printed %q", dev)
		}
		return dev, nil
	}
	want := a.o.DirectIO != "off"
	dev, err = run(want)
	if err != nil && want && a.o.DirectIO == "auto" {
		// losetup may refuse direct I/O outright on some kernels.
		for _, d := range loopsOf(file) {
			loopClear(d, file)
		}
		dev, err = run(false)
	}
	if err != nil {
		return "", false, err
	}
	s, _ := readSysfs(filepath.Join(sysBlock(dev), "loop", "dio"))
	dio = s == "1"
	if a.o.DirectIO == "on" && !dio {
		loopClear(dev, file)
		return "", false, fmt.Errorf("%w: the kernel refused direct I/O on %s for a FUSE file", ErrUnsupported, dev)
	}
	return dev, dio, nil
}

func (a *attacher) checkFuse(st *state) (Device, error) {
	d := st.device()
	stale := func(why string, args ...any) (Device, error) {
		return d, fmt.Errorf("%w: %s (%s): %s", ErrStale, st.ID, d.Path, fmt.Sprintf(why, args...))
	}
	if st.Loop == "" {
		return stale("attach did not finish")
	}
	if b := loopBacking(st.Loop); b != st.File {
		return stale("%s maps %q, not %s", st.Loop, b, st.File)
	}
	if !procAlive(st.PID, st.PIDStart) {
		return stale("nbdfuse (pid %d) is not running", st.PID)
	}
	if m, _ := mounted(st.Mountpoint); !m {
		return stale("%s is not mounted", st.Mountpoint)
	}
	sz, err := blockSize(st.Loop)
	if err != nil {
		return stale("%v", err)
	}
	d.Size = sz
	return d, nil
}

func (a *attacher) resizeFuse(ctx context.Context, st *state, cur Device, exp Export) (Device, error) {
	fi, err := os.Stat(st.File)
	if err != nil {
		return Device{}, fmt.Errorf("attach: %w", err)
	}
	limit := fi.Size() &^ 511
	want := exp.Size
	if want == 0 {
		want = limit
	}
	if want > limit {
		return Device{}, fmt.Errorf("%w: size %d exceeds the %d bytes nbdfuse learned when it connected; "+
			"an nbdfuse attachment grows only up to the server's virtual size (virtual_size=) at attach time", ErrInvalid, want, limit)
	}
	size, err := resizeTarget(cur, want, limit, "the export")
	if err != nil {
		return Device{}, err
	}
	if size != cur.Size {
		if err := loopSetSizeLimit(st.Loop, size); err != nil {
			return Device{}, fmt.Errorf("attach: resize %s: %w", st.Loop, err)
		}
	}
	got, err := blockSize(st.Loop)
	if err != nil {
		return Device{}, fmt.Errorf("attach: %w", err)
	}
	if got != size {
		return Device{}, fmt.Errorf("attach: resize %s: the kernel shows %d bytes, want %d", st.Loop, got, size)
	}
	st.Size = size
	if err := a.writeState(st); err != nil {
		return Device{}, err
	}
	return st.device(), nil
}

// teardownFuse removes the loop devices on the attachment's file, unmounts
// the FUSE file, stops nbdfuse and removes the record. Each step tolerates
// what is already gone; a busy device stops it with ErrBusy.
func (a *attacher) teardownFuse(ctx context.Context, st *state) error {
	deadline := time.Now().Add(a.o.Timeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	mnt := st.Mountpoint
	if mnt == "" {
		mnt = filepath.Join(a.dir(st.ID), "mnt")
	}
	file := st.File
	if file == "" {
		file = filepath.Join(mnt, "disk")
	}
	loops := loopsOf(file)
	for _, l := range loops {
		if devBusy(l) {
			return fmt.Errorf("%w: %s (%s) is mounted or in use", ErrBusy, l, st.ID)
		}
	}
	for _, l := range loops {
		flushDevWithin(l, time.Until(deadline)/2)
		if err := loopClear(l, file); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("attach: detach %s: %w", l, err)
		}
	}
	// LOOP_CLR_FD on an open device only marks it for autoclear.
	for len(loopsOf(file)) > 0 {
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: %v still open (autoclear pending)", ErrBusy, loopsOf(file))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if m, _ := mounted(mnt); m {
		if err := unmount(mnt, deadline); err != nil {
			return fmt.Errorf("attach: %w", err)
		}
	}
	// nbdfuse exits once unmounted; make sure.
	if err := stopProcess(st.PID, st.PIDStart, "nbdfuse"); err != nil {
		return fmt.Errorf("attach: %w", err)
	}
	return a.removeState(st.ID)
}

// stopProcess waits briefly for process pid (started at start, named comm)
// to exit, then sends SIGTERM, then SIGKILL.
func stopProcess(pid int, start uint64, comm string) error {
	if pid <= 0 {
		return nil
	}
	alive := func() bool {
		s, c, ok := procStart(pid)
		if !ok {
			return false
		}
		if start != 0 {
			return s == start
		}
		return c == comm // without a start time, only touch a process of that name
	}
	for _, step := range []struct {
		sig  syscall.Signal
		wait time.Duration
	}{{0, 2 * time.Second}, {syscall.SIGTERM, 3 * time.Second}, {syscall.SIGKILL, 2 * time.Second}} {
		if !alive() {
			return nil
		}
		if step.sig != 0 {
			syscall.Kill(pid, step.sig)
		}
		for end := time.Now().Add(step.wait); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
			if !alive() {
				return nil
			}
		}
	}
	return fmt.Errorf("%s (pid %d) does not exit", comm, pid)
}

// logTail is the end of a log file, for error messages.
func logTail(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > 2048 {
		f.Seek(fi.Size()-2048, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	return strings.TrimSpace(string(b))
}
