package driver

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
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
		{wrap(vb.ErrTooManySnapshots), codes.ResourceExhausted},
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
		{wrap(errNotPermitted), codes.FailedPrecondition},
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

// A resize tool the kernel refuses (no CAP_SYS_RESOURCE) is told apart from
// a failing filesystem.
func TestRefusedByKernel(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("resize2fs: %w", syscall.EPERM), true},
		{errors.New("resize of device /dev/loop3 failed: exit status 1. resize2fs output: resize2fs 1.47.0\nresize2fs: Operation not permitted While checking for on-line resizing support"), true},
		{errors.New("xfs_growfs: XFS_IOC_FSGROWFSDATA xfsctl failed: Permission denied"), true},
		{errors.New("resize2fs: Bad magic number in super-block while trying to open /dev/loop3"), false},
	} {
		if got := refusedByKernel(tc.err); got != tc.want {
			t.Errorf("refusedByKernel(%q) = %v, want %v", tc.err, got, tc.want)
		}
	}
	if toStatus(nil, "x") != nil {
		t.Error("nil error became a status")
	}
}

func TestRequired(t *testing.T) {
	if err := required("volume_id", "v", "target_path", "/t"); err != nil {
		t.Fatal(err)
	}
	err := required("volume_id", "v", "target_path", "", "staging_target_path", "")
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "target_path is required") {
		t.Fatalf("missing target_path: %v", err)
	}
}
