package driver

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/viperblock/viperblock-csi/pkg/attach"
	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

func TestToStatus(t *testing.T) {
	wrap := func(e error) error { return fmt.Errorf("viperblock: open x: %w", e) }
	for _, tc := range []struct {
		err  error
		code codes.Code
	}{
		{wrap(vb.ErrNotFound), codes.NotFound},
		{wrap(backend.ErrNotFound), codes.NotFound},
		{wrap(vb.ErrExists), codes.AlreadyExists},
		{wrap(vb.ErrInvalidName), codes.InvalidArgument},
		{wrap(vb.ErrInvalidArg), codes.InvalidArgument},
		{wrap(vb.ErrOutOfRange), codes.OutOfRange},
		{wrap(vb.ErrInUse), codes.FailedPrecondition},
		{wrap(vb.ErrReadOnly), codes.FailedPrecondition},
		{wrap(vb.ErrFenced), codes.FailedPrecondition},
		{wrap(vb.ErrCorrupt), codes.DataLoss},
		{wrap(vb.ErrBackendState), codes.DataLoss},
		{wrap(vb.ErrClosed), codes.Unavailable},
		{wrap(errConnRefused), codes.Unavailable},
		{wrap(context.DeadlineExceeded), codes.DeadlineExceeded},
		{wrap(context.Canceled), codes.Canceled},
		{wrap(errInFlight), codes.Aborted},
		{wrap(errNotDrained), codes.Unavailable},
		{wrap(attach.ErrBusy), codes.FailedPrecondition},
		{wrap(attach.ErrStale), codes.Unavailable},
		{wrap(backend.ErrInvalidURL), codes.FailedPrecondition},
		{errors.New("something else"), codes.Internal},
		{status.Error(codes.ResourceExhausted, "kept"), codes.ResourceExhausted},
	} {
		got := toStatus(tc.err, "doing x")
		if status.Code(got) != tc.code {
			t.Errorf("%v: code %s, want %s", tc.err, status.Code(got), tc.code)
		}
	}
	if toStatus(nil, "x") != nil {
		t.Error("nil error became a status")
	}
}
