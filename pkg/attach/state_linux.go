//go:build linux

package attach

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/vfs"
)

const stateVersion = 1

// state is the record of one attachment, StateDir/<ID>/state.json. The
// package doc lists the fields.
type state struct {
	Version  int    `json:"version"`
	Kind     string `json:"kind"`
	ID       string `json:"id"`
	Socket   string `json:"socket,omitempty"`
	Addr     string `json:"addr,omitempty"`
	Name     string `json:"name,omitempty"`
	ReadOnly bool   `json:"read_only,omitempty"`
	Size     int64  `json:"size"`

	// nbdfuse
	Mountpoint string `json:"mountpoint,omitempty"`
	File       string `json:"file,omitempty"`
	PID        int    `json:"pid,omitempty"`
	PIDStart   uint64 `json:"pid_start,omitempty"`
	ExportSize int64  `json:"export_size,omitempty"`
	Loop       string `json:"loop,omitempty"`
	DirectIO   bool   `json:"direct_io,omitempty"`

	// nbd
	Index   int    `json:"index"`
	Backend string `json:"backend,omitempty"`
	Conns   int    `json:"conns,omitempty"`
}

func (st *state) device() Device {
	d := Device{Kind: st.Kind, ID: st.ID, Size: st.Size}
	switch st.Kind {
	case KindNbdfuse:
		d.Path = st.Loop
	case KindNBD:
		if st.Index >= 0 {
			d.Path = "/dev/nbd" + strconv.Itoa(st.Index)
		}
	}
	return d
}

func (a *attacher) dir(id string) string       { return filepath.Join(a.o.StateDir, id) }
func (a *attacher) statePath(id string) string { return filepath.Join(a.dir(id), "state.json") }

// readState returns the record of id, or nil if there is none.
func (a *attacher) readState(id string) (*state, error) {
	return readStateFile(vfs.Default, a.statePath(id), id)
}

// readStateFile reads and checks the record of id at path: nil if there
// is none; a clear error, never a zero record, if it is unreadable.
func readStateFile(fsys vfs.FS, path, id string) (*state, error) {
	b, err := vfs.ReadFile(fsys, path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("attach: reading state of %s: %w", id, err)
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("attach: corrupt state file %s (%d bytes): %w", path, len(b), err)
	}
	if st.Version != stateVersion || st.ID != id || (st.Kind != KindNbdfuse && st.Kind != KindNBD) {
		return nil, fmt.Errorf("attach: state file %s: version %d kind %q id %q not understood", path, st.Version, st.Kind, st.ID)
	}
	return &st, nil
}

// writeState writes the record atomically (vfs.WriteFileAtomic: temp
// file, fsync, rename, fsync of the directory), mode 0600.
func (a *attacher) writeState(st *state) error {
	return writeStateFile(vfs.Default, a.dir(st.ID), st)
}

func writeStateFile(fsys vfs.FS, dir string, st *state) error {
	st.Version = stateVersion
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if err := vfs.MkdirAllDurable(fsys, dir); err != nil {
		return fmt.Errorf("attach: %w", err)
	}
	if err := vfs.WriteFileAtomic(fsys, filepath.Join(dir, "state.json"), b); err != nil {
		return fmt.Errorf("attach: writing state of %s: %w", st.ID, err)
	}
	return nil
}

func syncDir(dir string) error { return vfs.SyncDir(vfs.Default, dir) }

// removeState deletes the record and the attachment's directory, which
// must hold nothing but our own files by now (an unmounted, empty
// mountpoint at most). It never descends into a mount.
func (a *attacher) removeState(id string) error {
	dir := a.dir(id)
	if err := os.Remove(a.statePath(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("attach: %w", err)
	}
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("attach: %w", err)
	}
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		// os.Remove, not RemoveAll: a directory still mounted or not
		// empty stays, and so does dir.
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("attach: cleaning up %s: %w", dir, err)
		}
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("attach: %w", err)
	}
	return syncDir(a.o.StateDir)
}

// lock takes the per-ID lock, flock(2) on StateDir/<ID>.lock, which
// serialises operations on one ID between goroutines and processes. The
// lock file is removed on unlock when the ID is no longer attached; a waiter
// that then holds a lock on the removed file notices and retries.
func (a *attacher) lock(ctx context.Context, id string) (unlock func(), err error) {
	if err := os.MkdirAll(a.o.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("attach: state dir: %w", err)
	}
	path := filepath.Join(a.o.StateDir, id+".lock")
	for {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("attach: lock: %w", err)
		}
		if err := flock(ctx, f); err != nil {
			f.Close()
			return nil, fmt.Errorf("attach: lock %s: %w", path, err)
		}
		var st1, st2 syscall.Stat_t
		if syscall.Fstat(int(f.Fd()), &st1) == nil && syscall.Stat(path, &st2) == nil && st1.Ino == st2.Ino && st1.Dev == st2.Dev {
			return func() {
				if _, err := os.Stat(a.dir(id)); errors.Is(err, fs.ErrNotExist) {
					os.Remove(path)
				}
				f.Close() // releases the lock
			}, nil
		}
		f.Close() // the file was removed or replaced while we waited
	}
}

// flock takes an exclusive lock on f, polling so that ctx can end the wait.
func flock(ctx context.Context, f *os.File) error {
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err != syscall.EWOULDBLOCK && err != syscall.EINTR {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for another operation on the same ID: %w", ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// procStart returns the start time of process pid (clock ticks since boot,
// field 22 of /proc/PID/stat) and its comm, or ok=false if pid does not
// exist or is a zombie.
func procStart(pid int) (start uint64, comm string, ok bool) {
	if pid <= 0 {
		return 0, "", false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, "", false
	}
	// comm is in parentheses and may hold spaces; fields after the last ')'.
	i, j := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if i < 0 || j < i {
		return 0, "", false
	}
	comm = string(b[i+1 : j])
	f := strings.Fields(string(b[j+1:]))
	// f[0] is field 3 (state); field 22 is f[19].
	if len(f) < 20 || f[0] == "Z" || f[0] == "X" {
		return 0, "", false
	}
	start, err = strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return 0, "", false
	}
	return start, comm, true
}

// procAlive reports whether pid is still the process that started at start.
func procAlive(pid int, start uint64) bool {
	s, _, ok := procStart(pid)
	return ok && (start == 0 || s == start)
}
