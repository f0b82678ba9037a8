// Package attach turns an NBD export (served by nbdkit on a Unix socket or
// TCP) into a local block device, and back.
//
// Two attachers implement the interface: the kernel NBD client (/dev/nbdX,
// configured over generic netlink, with a dead-connection timeout so a
// restarted server can be reconnected) and nbdfuse + loop (for kernels
// without nbd: nbdfuse exposes the export as a file, losetup turns the file
// into /dev/loopN). New chooses one: "nbd", "nbdfuse", or "auto" (kernel NBD
// when the nbd module is loaded or loadable, else nbdfuse).
//
// # State
//
// Every attachment has a directory StateDir/<ID>/ holding state.json, written
// atomically (temp file, fsync, rename, fsync of the directory) before and
// after each step that creates something (nbdfuse process, loop device, nbd
// connection), so that Find, Detach and Resize work from a new process (the
// CSI node plugin restarted) and a crash in the middle of Attach leaves a
// record that Detach or the next Attach cleans up. An attacher handles the
// attachments of either kind that it finds in its StateDir, whatever kind it
// creates new ones with. Operations on one ID are serialised across
// processes by flock(2) on StateDir/<ID>.lock.
//
// state.json (version 1) is a JSON object: version, kind ("nbd" |
// "nbdfuse"), id, socket, addr, name, read_only, size (bytes the device
// shows); for nbdfuse: mountpoint, file (the FUSE file), pid and pid_start
// (nbdfuse's pid and its start time in clock ticks from /proc/PID/stat, so a
// reused pid is not mistaken for it), export_size (the size nbdfuse learned
// at connect time), loop (/dev/loopN), direct_io; for nbd: index, backend
// (the kernel's backend identifier, "viperblock:<ID>"), conns (number of
// connections).
//
// # Growing a volume while attached
//
// The kernel NBD client is told the new size over netlink
// (NBD_CMD_RECONFIGURE with NBD_ATTR_SIZE_BYTES, Linux 5.3+).
//
// nbdfuse learns the export's size once, at connect time, and a loop device
// cannot be re-pointed at a new file while a filesystem is mounted on it. So
// for nbdfuse the server must advertise a virtual size at least as large as
// any size the volume may grow to (the viperblock plugin's virtual_size=
// parameter), and the loop device is limited to the volume's size
// (Export.Size, losetup --sizelimit). Resize raises the limit of the live
// loop device with LOOP_SET_STATUS64 (lo_sizelimit); the kernel updates the
// capacity and a mounted ext4 or xfs can then be grown online (resize2fs,
// xfs_growfs). The server must answer reads between the volume's size and
// the virtual size (zeros are fine) and never sees writes there.
package attach

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"time"
)

// Export names an NBD export.
type Export struct {
	// Socket is the server's Unix socket path; if empty, Addr is used.
	Socket string
	// Addr is host:port for a TCP server.
	Addr string
	// Name is the export name (may be empty).
	Name string
	// ID names the attachment (a volume id); it appears in state paths and
	// lets Find re-adopt an attachment after a restart. [A-Za-z0-9._-],
	// at most 200 bytes, not starting with a dot.
	ID string
	// ReadOnly attaches read-only.
	ReadOnly bool
	// Size is the size in bytes the device must show: the volume's size,
	// which may be smaller than what the server advertises (see "Growing a
	// volume while attached" in the package doc). 0 means the export's own
	// size. A multiple of 512, and of the block size for kernel NBD. Attach
	// uses it for a new attachment; Resize grows the device to it.
	Size int64
}

// Device is an attached block device.
type Device struct {
	// Path is the block device node, e.g. /dev/nbd0 or /dev/loop3.
	Path string
	// Kind is "nbd" or "nbdfuse".
	Kind string
	// ID is the Export.ID it was attached with.
	ID string
	// Size is the device size in bytes when attached or last resized.
	Size int64
}

// Attacher attaches and detaches NBD exports.
type Attacher interface {
	// Attach connects to the export and returns its block device. It is
	// idempotent: attaching an ID that is attached returns its device (as
	// it is: Attach does not resize; call Resize). An attachment found
	// broken (ErrStale) is torn down and made anew when nothing uses it.
	Attach(ctx context.Context, exp Export) (Device, error)
	// Detach flushes and disconnects the device; detaching an ID that is
	// not attached is not an error. A device that is mounted or otherwise
	// held returns ErrBusy and stays attached.
	Detach(ctx context.Context, id string) error
	// Find returns the device attached under id, if any (after a restart of
	// the calling process, attachments made before it are found). When a
	// record exists but the attachment is broken (nbdfuse died, the loop or
	// nbd device is gone), Find returns the recorded device, false and an
	// error wrapping ErrStale.
	Find(ctx context.Context, id string) (Device, bool, error)
	// Resize makes the device show the export's current size, after the
	// export has grown, without detaching it: exp.Size if set, else the
	// size the server advertises now. Shrinking is refused (ErrInvalid).
	Resize(ctx context.Context, exp Export) (Device, error)
	// Kind is "nbd" or "nbdfuse": the kind new attachments get.
	Kind() string
}

// Reconnecter is implemented by the attachers New returns. After the NBD
// server of an attached export was restarted (on the same socket or
// address), Reconnect gives the kernel new connections to it; the kernel NBD
// device holds I/O for up to Options.DeadConnTimeout meanwhile, so users of
// the device see no error. For nbdfuse attachments it returns
// ErrUnsupported: nbdfuse cannot reconnect, the server must not be
// restarted while they are attached.
type Reconnecter interface {
	Reconnect(ctx context.Context, exp Export) (Device, error)
}

// Options configures an attacher. The zero value is usable.
type Options struct {
	// StateDir holds the attachments' state (default DefaultStateDir). It
	// should not outlive a reboot (a tmpfs such as /run), since the devices
	// do not either; stale records are cleaned up anyway.
	StateDir string
	// Timeout bounds each wait on a process or the kernel: nbdfuse ready,
	// a busy FUSE unmount, an nbd device disconnecting (default 30s).
	Timeout time.Duration

	// nbdfuse + loop.

	// Nbdfuse and Losetup are the binaries (default: looked up on PATH).
	Nbdfuse, Losetup string
	// NbdfuseArgs are extra nbdfuse options, e.g. "-C", "1".
	NbdfuseArgs []string
	// Wrapper is a command prefix for nbdfuse (e.g. one that runs it in
	// another scope). nbdfuse always runs in its own session (setsid), so
	// signals to the caller's process group do not reach it; its pid is
	// taken from its pidfile, not from the wrapper.
	Wrapper []string
	// Place, if set, is called with the pid of each nbdfuse (or of its
	// Wrapper) right after it starts, and again with the pid nbdfuse
	// records once it serves (it may have forked by then): e.g. to move
	// it into a cgroup outside the caller's container, so that it
	// outlives the container (see package hostcgroup). If it fails, the
	// attach fails.
	Place func(pid int) error
	// DirectIO is "auto" (default: ask for direct I/O on the loop device,
	// accept what the kernel grants), "on" (fail without it) or "off".
	// Direct I/O keeps the loop device's data out of the FUSE file's page
	// cache (no double caching, no writeback through FUSE under memory
	// pressure).
	DirectIO string

	// Kernel NBD.

	// Connections is the number of connections per device (default 1; more
	// only when the server advertises multi-conn).
	Connections int
	// BlockSize is the device's logical block size (default 512, raised to
	// the server's minimum block size). Keep it the same on every node: a
	// filesystem made with 512-byte sectors does not mount on a device with
	// 4096-byte ones.
	BlockSize int
	// DeadConnTimeout is how long the kernel holds I/O while no connection
	// to the server is alive, waiting for Reconnect (default 5 minutes).
	DeadConnTimeout time.Duration
	// IOTimeout is the kernel's per-request timeout (0: kernel default).
	IOTimeout time.Duration
	// NoModprobe keeps New from running "modprobe nbd" when the nbd module
	// is not loaded.
	NoModprobe bool
}

// DefaultStateDir is the default Options.StateDir.
const DefaultStateDir = "/run/viperblock/attach"

// Kinds.
const (
	KindNBD     = "nbd"
	KindNbdfuse = "nbdfuse"
	KindAuto    = "auto"
)

// New returns an attacher of the given kind: "nbd", "nbdfuse" or "auto"
// (kernel NBD when available, else nbdfuse). It returns an error wrapping
// ErrUnsupported when the kind cannot work on this machine (no nbd module
// and modprobe fails; no /dev/fuse, nbdfuse or losetup).
func New(kind string, o Options) (Attacher, error) {
	if o.StateDir == "" {
		o.StateDir = DefaultStateDir
	}
	if o.Timeout <= 0 {
		o.Timeout = 30 * time.Second
	}
	switch o.DirectIO {
	case "":
		o.DirectIO = "auto"
	case "auto", "on", "off":
	default:
		return nil, fmt.Errorf("%w: DirectIO %q (want auto, on or off)", ErrInvalid, o.DirectIO)
	}
	if o.Connections <= 0 {
		o.Connections = 1
	}
	if o.BlockSize == 0 {
		o.BlockSize = 512
	}
	if o.BlockSize < 512 || o.BlockSize > 4096 || o.BlockSize&(o.BlockSize-1) != 0 {
		return nil, fmt.Errorf("%w: BlockSize %d (want a power of two in 512..4096)", ErrInvalid, o.BlockSize)
	}
	if o.DeadConnTimeout <= 0 {
		o.DeadConnTimeout = 5 * time.Minute
	}
	switch kind {
	case KindNBD, KindNbdfuse, KindAuto:
	default:
		return nil, fmt.Errorf("%w: attacher kind %q (want nbd, nbdfuse or auto)", ErrInvalid, kind)
	}
	return newAttacher(kind, o)
}

// Errors.
var (
	ErrUnsupported = errors.New("attach: not supported on this machine")
	ErrNotAttached = errors.New("attach: not attached")
	// ErrInvalid marks bad arguments (ID, sizes, missing address).
	ErrInvalid = errors.New("attach: invalid argument")
	// ErrBusy marks a device that is mounted or held open, so it cannot be
	// detached (or a stale attachment that cannot be cleaned up).
	ErrBusy = errors.New("attach: device busy")
	// ErrStale marks a recorded attachment that no longer works.
	ErrStale = errors.New("attach: stale attachment")
)

var idRE = regexp.MustCompile(`^[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}$`)

// ValidID reports whether id can name an attachment.
func ValidID(id string) bool { return idRE.MatchString(id) }

func checkID(id string) error {
	if !ValidID(id) {
		return fmt.Errorf("%w: attachment ID %q (want [A-Za-z0-9._-], 1..200 bytes, no leading dot)", ErrInvalid, id)
	}
	return nil
}

func checkExport(exp Export) error {
	if err := checkID(exp.ID); err != nil {
		return err
	}
	if exp.Socket == "" && exp.Addr == "" {
		return fmt.Errorf("%w: export %s has neither Socket nor Addr", ErrInvalid, exp.ID)
	}
	if exp.Size < 0 || exp.Size%512 != 0 {
		return fmt.Errorf("%w: size %d is not a non-negative multiple of 512", ErrInvalid, exp.Size)
	}
	return nil
}
