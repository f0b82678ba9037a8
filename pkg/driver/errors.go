package driver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/viperblock/viperblock-csi/pkg/attach"
	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

// toStatus is the one place where errors from the engine, the object store
// and the node's helpers become gRPC status codes. what says what the
// driver was doing ("create volume default/pvc-1"); the engine's message
// follows it. An error that already is a gRPC status passes through.
func toStatus(err error, what string) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(codeOf(err), what+": "+err.Error())
}

// codeOf maps an error to a gRPC code.
func codeOf(err error) codes.Code {
	var st interface{ GRPCStatus() *status.Status }
	var ne net.Error
	switch {
	case errors.As(err, &st):
		return st.GRPCStatus().Code()
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	case errors.Is(err, vb.ErrNotFound), errors.Is(err, backend.ErrNotFound), errors.Is(err, errNotStaged):
		return codes.NotFound
	case errors.Is(err, vb.ErrExists):
		return codes.AlreadyExists
	case errors.Is(err, vb.ErrInvalidName), errors.Is(err, vb.ErrInvalidArg), errors.Is(err, backend.ErrInvalidKey),
		errors.Is(err, errInvalidSecret):
		return codes.InvalidArgument
	case errors.Is(err, vb.ErrOutOfRange):
		return codes.OutOfRange
	case errors.Is(err, vb.ErrTooManySnapshots):
		return codes.ResourceExhausted
	case errors.Is(err, vb.ErrInUse), errors.Is(err, vb.ErrReadOnly), errors.Is(err, vb.ErrFenced), errors.Is(err, vb.ErrKey),
		errors.Is(err, errBusy), errors.Is(err, errNotPermitted), errors.Is(err, backend.ErrInvalidURL), errors.Is(err, backend.ErrIncompatible), errors.Is(err, attach.ErrBusy),
		errors.Is(err, attach.ErrUnsupported), errors.Is(err, attach.ErrInvalid), errors.Is(err, attach.ErrNotAttached):
		// The request is fine but the system is not in a state to carry it
		// out (open on a node, fenced, mounted elsewhere, store
		// misconfigured or failing the self-test): retrying unchanged will not help until that
		// state changes.
		return codes.FailedPrecondition
	case errors.Is(err, vb.ErrCorrupt), errors.Is(err, vb.ErrBackendState):
		return codes.DataLoss
	case errors.Is(err, errInFlight):
		return codes.Aborted
	case errors.Is(err, vb.ErrClosed), errors.Is(err, errNotDrained), errors.Is(err, errUnavailable), errors.Is(err, attach.ErrStale),
		errors.As(err, &ne), errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET):
		return codes.Unavailable
	}
	return codes.Internal
}

// Errors of the driver's own, mapped by codeOf.
var (
	// errInFlight: the same operation on the same object is running.
	errInFlight = errors.New("an operation on this object is already in progress")
	// errNotStaged: the volume is not staged on this node.
	errNotStaged = errors.New("volume is not staged on this node")
	// errBusy: a mount point or device is in use.
	errBusy = errors.New("in use")
	// errNotPermitted: the kernel refused a filesystem operation to the
	// node plugin (online growth needs CAP_SYS_RESOURCE).
	errNotPermitted = errors.New("operation not permitted to the node plugin")
	// errNotDrained: nbdkit exited but the volume was not drained to the
	// backend; the data is safe in the node's WAL and a retry drains it.
	errNotDrained = errors.New("volume not drained to the backend yet")
	// errUnavailable: a transient condition (backend, node helper).
	errUnavailable = errors.New("temporarily unavailable")
	// errInvalidSecret: a CSI secret is malformed.
	errInvalidSecret = errors.New("invalid secret")
	// errOwnedElsewhere: another owner has taken the volume over since this
	// node's nbdkit opened it (see checkOwner). A kind of vb.ErrFenced.
	errOwnedElsewhere = fmt.Errorf("%w: another owner has taken the volume over since this node opened it", vb.ErrFenced)
)

// required checks a request's required fields, given as (name, value)
// pairs, and returns InvalidArgument naming the first that is empty.
func required(pairs ...string) error {
	for i := 0; i+1 < len(pairs); i += 2 {
		if pairs[i+1] == "" {
			return invalidArg("%s is required", pairs[i])
		}
	}
	return nil
}

// invalidArg returns an InvalidArgument status.
func invalidArg(format string, args ...any) error {
	return status.Error(codes.InvalidArgument, fmt.Sprintf(format, args...))
}
