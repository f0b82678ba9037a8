// Package attach turns an NBD export (served by nbdkit on a Unix socket or
// TCP) into a local block device, and back.
//
// Two attachers implement the interface: the kernel NBD client (/dev/nbdX,
// configured over netlink, with a dead-connection timeout so a restarted
// server can be reconnected) and nbdfuse + loop (for kernels without nbd:
// nbdfuse exposes the export as a file, losetup turns the file into
// /dev/loopN). New chooses one: "nbd", "nbdfuse", or "auto" (kernel NBD when
// the nbd module is loaded or loadable).
package attach

import (
	"context"
	"errors"
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
	// lets Find re-adopt an attachment after a restart. [A-Za-z0-9._-].
	ID string
	// ReadOnly attaches read-only.
	ReadOnly bool
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
	// idempotent: attaching an ID that is attached returns its device.
	Attach(ctx context.Context, exp Export) (Device, error)
	// Detach flushes and disconnects the device; detaching an ID that is
	// not attached is not an error.
	Detach(ctx context.Context, id string) error
	// Find returns the device attached under id, if any (after a restart of
	// the calling process, attachments made before it are found).
	Find(ctx context.Context, id string) (Device, bool, error)
	// Resize makes the device show the export's current size, after the
	// export has grown, without detaching it.
	Resize(ctx context.Context, exp Export) (Device, error)
	// Kind is "nbd" or "nbdfuse".
	Kind() string
}

// Errors.
var (
	ErrUnsupported = errors.New("attach: not supported on this machine")
	ErrNotAttached = errors.New("attach: not attached")
)
