package driver

import (
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	grpcstatus "google.golang.org/grpc/status"
)

// The volume RPCs' preamble: its checks, their order and their codes.
func TestVolumeCallPreamble(t *testing.T) {
	var locks inflight
	badCap := &csi.VolumeCapability{}
	for _, c := range []struct {
		name string
		call volumeCall
		code codes.Code
		noop bool
	}{
		{"ok", volumeCall{verb: "x", volumeID: "default/v1", capability: mountCapability(snw), locks: &locks}, codes.OK, false},
		{"no volume_id", volumeCall{verb: "x", capability: badCap}, codes.InvalidArgument, false},
		{"no other field", volumeCall{verb: "x", volumeID: "default/v1", fields: []string{"target_path", ""}}, codes.InvalidArgument, false},
		{"no capability", volumeCall{verb: "x", volumeID: "default/v1", needCap: true}, codes.InvalidArgument, false},
		{"bad capability before a bad ID", volumeCall{verb: "x", volumeID: "bad id", capability: badCap}, codes.InvalidArgument, false},
		{"malformed ID", volumeCall{verb: "x", volumeID: "no-store"}, codes.NotFound, false},
		{"malformed ID, idempotent call", volumeCall{verb: "x", volumeID: "no-store", malformed: malformedNoop}, codes.OK, true},
		{"malformed ID, proceed", volumeCall{verb: "x", volumeID: "no-store", malformed: malformedProceed, locks: &locks}, codes.OK, false},
	} {
		op, noop, err := c.call.begin()
		if grpcstatus.Code(err) != c.code || noop != c.noop {
			t.Errorf("%s: %v, noop %v; want %v, noop %v", c.name, err, noop, c.code, c.noop)
		}
		if op != nil {
			op.end()
		}
	}
	// A second call on a volume in work is Aborted, and the error names it.
	op, _, err := volumeCall{verb: "stage volume", volumeID: "default/v1", locks: &locks}.begin()
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := (volumeCall{verb: "unstage volume", volumeID: "default/v1", locks: &locks}).begin(); grpcstatus.Code(err) != codes.Aborted {
		t.Fatalf("concurrent call: %v, want Aborted", err)
	}
	if err := op.fail(errNotStaged); grpcstatus.Code(err) == codes.OK || !strings.Contains(grpcstatus.Convert(err).Message(), "stage volume default/v1") {
		t.Fatalf("op.fail: %v", err)
	}
	op.end()
	if _, _, err := (volumeCall{verb: "unstage volume", volumeID: "default/v1", locks: &locks}).begin(); err != nil {
		t.Fatalf("after end: %v", err)
	}
}
