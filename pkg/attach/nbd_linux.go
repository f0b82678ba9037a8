//go:build linux

package attach

// Kernel NBD: the handshake is done here (proto.go), then the connected
// sockets are handed to the kernel with NBD_CMD_CONNECT over the "nbd"
// generic netlink family (<linux/nbd-netlink.h>). The device carries a
// backend identifier "viperblock:<ID>" (/sys/block/nbdX/backend, Linux
// 5.13+), which the kernel then requires and checks on every reconfigure.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	nbdGenlFamily  = "nbd"
	nbdGenlVersion = 1

	nbdCmdConnect     = 1
	nbdCmdDisconnect  = 2
	nbdCmdReconfigure = 3

	nbdAttrIndex           = 1
	nbdAttrSizeBytes       = 2
	nbdAttrBlockSizeBytes  = 3
	nbdAttrTimeout         = 4
	nbdAttrServerFlags     = 5
	nbdAttrSockets         = 7
	nbdAttrDeadConnTimeout = 8
	nbdAttrBackend         = 10

	nbdSockItem = 1
	nbdSockFD   = 1
)

// nbdModule is where the loaded nbd module shows, and modprobe the command
// that loads it; tests point them elsewhere to act as a machine without it.
var (
	nbdModule = "/sys/module/nbd"
	modprobe  = "modprobe"
)

// nbdAvailable reports (as an error wrapping ErrUnsupported) whether the
// kernel NBD client can be used: the nbd module is loaded, or modprobe
// loads it, and its netlink family answers.
func nbdAvailable(o Options) error {
	if _, err := os.Stat(nbdModule); err != nil {
		if o.NoModprobe {
			return fmt.Errorf("%w: the nbd kernel module is not loaded", ErrUnsupported)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, modprobe, "nbd").CombinedOutput()
		if err != nil {
			return fmt.Errorf("%w: the nbd kernel module is not loaded and modprobe nbd failed: %v %s", ErrUnsupported, err, strings.TrimSpace(string(out)))
		}
	}
	c, err := dialGenl()
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUnsupported, err)
	}
	defer c.Close()
	if _, err := c.family(nbdGenlFamily); err != nil {
		return fmt.Errorf("%w: generic netlink family %q: %v", ErrUnsupported, nbdGenlFamily, err)
	}
	return nil
}

// nbdRequest sends one command to the nbd family.
func (a *attacher) nbdRequest(cmd uint8, attrs nlAttrs) ([][]byte, error) {
	c, err := dialGenl()
	if err != nil {
		return nil, err
	}
	defer c.Close()
	fam, err := c.family(nbdGenlFamily)
	if err != nil {
		return nil, fmt.Errorf("%w: netlink family %q: %v", ErrUnsupported, nbdGenlFamily, err)
	}
	return c.request(fam, cmd, nbdGenlVersion, attrs, a.o.Timeout)
}

func nbdBackend(id string) string { return "viperblock:" + id }
func nbdDev(i int) string         { return "/dev/nbd" + strconv.Itoa(i) }

// nbdDial opens n connections and negotiates each up to transmission.
func nbdDial(ctx context.Context, exp Export, n int) ([]*os.File, ExportInfo, error) {
	var files []*os.File
	var info ExportInfo
	fail := func(err error) ([]*os.File, ExportInfo, error) {
		closeFiles(files)
		return nil, ExportInfo{}, err
	}
	for i := 0; i < n; i++ {
		c, inf, err := handshake(ctx, exp)
		if err != nil {
			return fail(err)
		}
		if i == 0 {
			info = inf
			if n > 1 && !inf.MultiConn() {
				n = 1 // the kernel refuses several connections without multi-conn
			}
		} else if inf.Size != info.Size || inf.Flags != info.Flags {
			c.Close()
			return fail(fmt.Errorf("attach: connections to %s disagree on the export", exportWhere(exp)))
		}
		f, err := c.(interface{ File() (*os.File, error) }).File()
		c.Close() // the dup in f keeps the connection
		if err != nil {
			return fail(fmt.Errorf("attach: %w", err))
		}
		if err := syscall.SetNonblock(int(f.Fd()), false); err != nil {
			f.Close()
			return fail(fmt.Errorf("attach: %w", err))
		}
		files = append(files, f)
	}
	return files, info, nil
}

func closeFiles(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}

func sockAttrs(a *nlAttrs, files []*os.File) {
	a.nest(nbdAttrSockets, func(s *nlAttrs) {
		for _, f := range files {
			s.nest(nbdSockItem, func(it *nlAttrs) { it.u32(nbdSockFD, uint32(f.Fd())) })
		}
	})
}

func (a *attacher) attachNBD(ctx context.Context, exp Export) (dev Device, err error) {
	files, info, err := nbdDial(ctx, exp, a.o.Connections)
	if err != nil {
		return Device{}, err
	}
	defer closeFiles(files) // the kernel holds its own references
	bs := int64(a.o.BlockSize)
	if m := int64(info.MinBlock); m > bs && m <= 4096 && m&(m-1) == 0 {
		bs = m
	}
	size := exp.Size
	if size == 0 {
		size = info.Size / bs * bs
	}
	if size == 0 || size > info.Size || size%bs != 0 {
		return Device{}, fmt.Errorf("%w: size %d for an export of %d bytes and block size %d", ErrInvalid, size, info.Size, bs)
	}
	flags := uint64(info.Flags)
	ro := exp.ReadOnly || info.ReadOnly()
	if ro {
		flags |= FlagReadOnly
	}
	st := &state{
		Kind: KindNBD, ID: exp.ID, Socket: exp.Socket, Addr: exp.Addr, Name: exp.Name,
		ReadOnly: ro, Size: size, Index: -1, Backend: nbdBackend(exp.ID), Conns: len(files),
	}
	if err := a.writeState(st); err != nil {
		return Device{}, err
	}
	defer func() {
		if err != nil {
			cctx, cancel := context.WithTimeout(context.Background(), a.o.Timeout)
			defer cancel()
			if terr := a.teardownNBD(cctx, st); terr != nil {
				err = fmt.Errorf("%w (cleanup: %v)", err, terr)
			}
		}
	}()
	var at nlAttrs
	at.u64(nbdAttrSizeBytes, uint64(size))
	at.u64(nbdAttrBlockSizeBytes, uint64(bs))
	at.u64(nbdAttrServerFlags, flags)
	at.u64(nbdAttrDeadConnTimeout, uint64(a.o.DeadConnTimeout/time.Second))
	if a.o.IOTimeout > 0 {
		at.u64(nbdAttrTimeout, uint64((a.o.IOTimeout+time.Second-1)/time.Second))
	}
	at.str(nbdAttrBackend, st.Backend)
	sockAttrs(&at, files)
	replies, err := a.nbdRequest(nbdCmdConnect, at)
	if err != nil {
		return Device{}, fmt.Errorf("attach: NBD_CMD_CONNECT: %w", err)
	}
	st.Index = -1
	for _, r := range replies {
		m, perr := parseAttrs(r)
		if perr == nil && len(m[nbdAttrIndex]) >= 4 {
			st.Index = int(binary.NativeEndian.Uint32(m[nbdAttrIndex]))
		}
	}
	if st.Index < 0 {
		// Older kernels may not say; find it by its backend.
		if idx := nbdByBackend(st.Backend); len(idx) == 1 {
			st.Index = idx[0]
		} else {
			return Device{}, errors.New("attach: NBD_CMD_CONNECT did not return the device index")
		}
	}
	if err := a.writeState(st); err != nil {
		return Device{}, err
	}
	if err := waitFor(ctx, a.o.Timeout, func() bool { s, err := blockSize(nbdDev(st.Index)); return err == nil && s == size }); err != nil {
		got, _ := blockSize(nbdDev(st.Index))
		return Device{}, fmt.Errorf("attach: %s shows %d bytes, want %d", nbdDev(st.Index), got, size)
	}
	if err := capRequests(filepath.Join(sysBlock(nbdDev(st.Index)), "queue"), info.MaxBlock); err != nil {
		return Device{}, fmt.Errorf("attach: %s: %w", nbdDev(st.Index), err)
	}
	return st.device(), nil
}

// nbdByBackend lists the nbd devices whose backend identifier is b.
func nbdByBackend(b string) []int {
	ms, _ := filepath.Glob("/sys/block/nbd*/backend")
	var out []int
	for _, m := range ms {
		if s, err := readSysfs(m); err == nil && s == b {
			if i, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(filepath.Dir(m)), "nbd")); err == nil {
				out = append(out, i)
			}
		}
	}
	return out
}

// nbdConnected reports whether /dev/nbdN has a configuration (its pid
// attribute exists from connect to disconnect).
func nbdConnected(i int) bool {
	_, err := os.Stat(filepath.Join("/sys/block", "nbd"+strconv.Itoa(i), "pid"))
	return err == nil
}

func (a *attacher) checkNBD(st *state) (Device, error) {
	d := st.device()
	stale := func(why string, args ...any) (Device, error) {
		return d, fmt.Errorf("%w: %s (%s): %s", ErrStale, st.ID, d.Path, fmt.Sprintf(why, args...))
	}
	if st.Index < 0 {
		return stale("attach did not finish")
	}
	if !nbdConnected(st.Index) {
		return stale("%s is not connected", d.Path)
	}
	if b, err := readSysfs(filepath.Join(sysBlock(d.Path), "backend")); err == nil && b != st.Backend {
		return stale("%s belongs to %q", d.Path, b)
	}
	sz, err := blockSize(d.Path)
	if err != nil {
		return stale("%v", err)
	}
	d.Size = sz
	return d, nil
}

func (a *attacher) teardownNBD(ctx context.Context, st *state) error {
	deadline := time.Now().Add(a.o.Timeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	backend := st.Backend
	if backend == "" {
		backend = nbdBackend(st.ID)
	}
	idx := nbdByBackend(backend)
	if st.Index >= 0 {
		b, err := readSysfs(filepath.Join("/sys/block", "nbd"+strconv.Itoa(st.Index), "backend"))
		if err != nil || b == backend || b == "" {
			idx = append(idx, st.Index)
		}
	}
	seen := map[int]bool{}
	for _, i := range idx {
		if seen[i] || !nbdConnected(i) {
			continue
		}
		seen[i] = true
		dev := nbdDev(i)
		if devBusy(dev) {
			return fmt.Errorf("%w: %s (%s) is mounted or in use", ErrBusy, dev, st.ID)
		}
		// Flush, but do not wait on a dead server: the disconnect fails
		// whatever is still pending.
		flushDevWithin(dev, time.Until(deadline)/2)
		var at nlAttrs
		at.u32(nbdAttrIndex, uint32(i))
		if _, err := a.nbdRequest(nbdCmdDisconnect, at); err != nil && !errors.Is(err, syscall.EINVAL) {
			return fmt.Errorf("attach: NBD_CMD_DISCONNECT %s: %w", dev, err)
		}
		if err := waitFor(ctx, time.Until(deadline), func() bool { return !nbdConnected(i) }); err != nil {
			return fmt.Errorf("%w: %s still connected after NBD_CMD_DISCONNECT", ErrBusy, dev)
		}
	}
	return a.removeState(st.ID)
}

func (a *attacher) resizeNBD(ctx context.Context, st *state, cur Device, exp Export) (Device, error) {
	info, err := Probe(ctx, exp)
	if err != nil {
		return Device{}, err
	}
	bs := int64(512)
	if s, err := readSysfs(filepath.Join(sysBlock(cur.Path), "queue", "logical_block_size")); err == nil {
		if n, err := strconv.ParseInt(s, 10, 64); err == nil && n > 0 {
			bs = n
		}
	}
	want := exp.Size
	if want == 0 {
		want = info.Size / bs * bs
	}
	if want%bs != 0 {
		return Device{}, fmt.Errorf("%w: size %d is not a multiple of the block size %d", ErrInvalid, want, bs)
	}
	size, err := resizeTarget(cur, want, info.Size, "the export")
	if err != nil {
		return Device{}, err
	}
	if size != cur.Size {
		var at nlAttrs
		at.u32(nbdAttrIndex, uint32(st.Index))
		at.str(nbdAttrBackend, st.Backend)
		at.u64(nbdAttrSizeBytes, uint64(size))
		if _, err := a.nbdRequest(nbdCmdReconfigure, at); err != nil {
			return Device{}, fmt.Errorf("attach: NBD_CMD_RECONFIGURE size: %w", err)
		}
		if err := waitFor(ctx, 2*time.Second, func() bool { s, _ := blockSize(cur.Path); return s == size }); err != nil {
			got, _ := blockSize(cur.Path)
			return Device{}, fmt.Errorf("%w: the kernel kept %s at %d bytes after NBD_CMD_RECONFIGURE with size %d (needs Linux 5.3+)", ErrUnsupported, cur.Path, got, size)
		}
	}
	st.Size = size
	if err := a.writeState(st); err != nil {
		return Device{}, err
	}
	return st.device(), nil
}

func (a *attacher) reconnectNBD(ctx context.Context, st *state, exp Export) (Device, error) {
	cur, err := a.checkNBD(st)
	if err != nil {
		return Device{}, err
	}
	files, info, err := nbdDial(ctx, exp, max(st.Conns, 1))
	if err != nil {
		return Device{}, err
	}
	defer closeFiles(files)
	if info.Size < cur.Size {
		return Device{}, fmt.Errorf("attach: reconnect %s: the export has %d bytes, the device %d", cur.Path, info.Size, cur.Size)
	}
	if err := capRequests(filepath.Join(sysBlock(cur.Path), "queue"), info.MaxBlock); err != nil {
		return Device{}, fmt.Errorf("attach: reconnect %s: %w", cur.Path, err)
	}
	var at nlAttrs
	at.u32(nbdAttrIndex, uint32(st.Index))
	at.str(nbdAttrBackend, st.Backend)
	sockAttrs(&at, files)
	if _, err := a.nbdRequest(nbdCmdReconfigure, at); err != nil {
		if errors.Is(err, syscall.ENOSPC) {
			return cur, nil // no dead connection to replace: nothing to do
		}
		return Device{}, fmt.Errorf("attach: NBD_CMD_RECONFIGURE sockets: %w", err)
	}
	return cur, nil
}

// waitFor polls cond until it holds, ctx ends or d passes.
func waitFor(ctx context.Context, d time.Duration, cond func() bool) error {
	end := time.Now().Add(d)
	for !cond() {
		if time.Now().After(end) {
			return errors.New("timed out")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}
