package driver

import (
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The RPCs that act on one volume all start the same way, in this order:
//
//  1. required fields (volume_id first): InvalidArgument;
//  2. the volume capability, when given or required: InvalidArgument;
//  3. the volume ID: one this driver cannot have issued is NotFound, or,
//     for the idempotent teardown calls, success with nothing to do;
//  4. the per-volume in-flight lock, for mutating calls: Aborted while
//     another call works on the volume.
//
// volumeCall describes those steps for one RPC; begin runs them. Errors
// past the preamble go through op.fail, so that every message names what
// the driver was doing ("stage volume default/pvc-1").

// malformedID says what an ID this driver cannot have issued means.
type malformedID int

const (
	malformedNotFound malformedID = iota // NotFound (most calls)
	malformedNoop                        // success, nothing to do (deletes, unpublishes)
	malformedProceed                     // carry on without an ID or a lock (NodeUnpublishVolume: the target still goes)
)

// volumeCall is the preamble of one RPC.
type volumeCall struct {
	verb       string // what the RPC does, for messages: "stage volume"
	volumeID   string
	fields     []string // further required fields: name, value, name, value, ...
	capability *csi.VolumeCapability
	needCap    bool        // the capability is required (else checked when given)
	malformed  malformedID // what an unparseable volume_id means
	locks      *inflight   // the in-flight locks to take the volume's from; nil: none (read-only calls)
}

// volumeOp is a call past its preamble.
type volumeOp struct {
	id      volumeID
	idOK    bool   // id parsed (false only with malformedProceed)
	acc     access // the checked capability (zero when none was given)
	hasCap  bool
	what    string // verb and volume, for messages
	release func()
}

// begin runs the preamble. With noop set the RPC answers success at once
// (an ID that cannot exist, for an idempotent call). Call op.end when done.
func (c volumeCall) begin() (op *volumeOp, noop bool, err error) {
	if err := required(append([]string{"volume_id", c.volumeID}, c.fields...)...); err != nil {
		return nil, false, err
	}
	op = &volumeOp{what: c.verb + " " + c.volumeID, release: func() {}}
	if c.needCap && c.capability == nil {
		return nil, false, invalidArg("volume_capability is required")
	}
	if c.capability != nil {
		op.acc, err = checkCapability(c.capability)
		if err != nil {
			return nil, false, invalidArg("%v", err)
		}
		op.hasCap = true
	}
	op.id, err = parseVolumeID(c.volumeID)
	switch {
	case err == nil:
		op.idOK = true
	case c.malformed == malformedNoop:
		return nil, true, nil
	case c.malformed == malformedProceed:
		return op, false, nil
	default:
		return nil, false, status.Errorf(codes.NotFound, "%v", err)
	}
	op.what = c.verb + " " + op.id.String()
	if c.locks != nil {
		op.release, err = c.locks.acquire(op.id.String())
		if err != nil {
			return nil, false, toStatus(err, op.what)
		}
	}
	return op, false, nil
}

// end releases the volume's lock.
func (o *volumeOp) end() { o.release() }

// fail turns an error past the preamble into a gRPC status.
func (o *volumeOp) fail(err error) error { return toStatus(err, o.what) }
