package driver

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
)

// requestedSize turns a capacity range into a size in whole 4 KiB blocks.
func requestedSize(r *csi.CapacityRange, def int64) (int64, error) {
	req, lim := r.GetRequiredBytes(), r.GetLimitBytes()
	if req < 0 || lim < 0 {
		return 0, status.Error(codes.InvalidArgument, "capacity range must not be negative")
	}
	if lim > 0 && req > lim {
		return 0, status.Errorf(codes.InvalidArgument, "required_bytes %d exceeds limit_bytes %d", req, lim)
	}
	size := req
	if size == 0 {
		size = def
		if lim > 0 && size > lim {
			size = lim
		}
	}
	if size > math.MaxInt64-(vb.BlockSize-1) { // roundUp would overflow
		return 0, status.Errorf(codes.OutOfRange, "%d bytes exceeds the largest volume, 1 PiB", size)
	}
	size = roundUp(size)
	if lim > 0 && size > lim {
		size = lim / vb.BlockSize * vb.BlockSize
		if size < req || size == 0 {
			return 0, status.Errorf(codes.OutOfRange, "no whole number of 4 KiB blocks fits in [%d, %d] bytes", req, lim)
		}
	}
	if size > maxVolumeSize {
		return 0, status.Errorf(codes.OutOfRange, "%d bytes exceeds the largest volume, 1 PiB", size)
	}
	return size, nil
}

func roundUp(n int64) int64 { return (n + vb.BlockSize - 1) / vb.BlockSize * vb.BlockSize }

// fits reports whether size satisfies a capacity range.
func fits(size int64, r *csi.CapacityRange) bool {
	return size >= r.GetRequiredBytes() && (r.GetLimitBytes() == 0 || size <= r.GetLimitBytes())
}

// CreateVolume creates a volume, blank or as a copy-on-write clone of a
// snapshot or another volume. The volume name is derived from the CSI name,
// so a retry finds the volume it created and returns it.
func (c *ControllerServer) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	if req.GetName() == "" {
		return nil, invalidArg("name is required")
	}
	if err := checkCapabilities(req.GetVolumeCapabilities()); err != nil {
		return nil, invalidArg("%v", err)
	}
	vp, err := parseVolumeParams(req.GetParameters(), c.opts.DefaultStore)
	if err != nil {
		return nil, invalidArg("%v", err)
	}
	if len(req.GetMutableParameters()) > 0 {
		return nil, invalidArg("mutable parameters are not supported")
	}
	if vp.FsType == "" {
		// The filesystem comes from the capability: the options must suit it.
		for _, vc := range req.GetVolumeCapabilities() {
			if fs := vc.GetMount().GetFsType(); fs != "" {
				if err := checkMkfsOptions(fs, vp.MkfsOptions); err != nil {
					return nil, invalidArg("%v", err)
				}
			}
		}
	}
	if _, err := c.stores.url(vp.Store); err != nil {
		return nil, invalidArg("parameter %s: %v", ParamStore, err)
	}
	size, err := requestedSize(req.GetCapacityRange(), c.opts.DefaultVolumeSize)
	if err != nil {
		return nil, err
	}
	// The volume ID comes from the name: the rest of the preamble (the
	// lock) is the other volume RPCs'.
	op, _, err := volumeCall{verb: "create volume", volumeID: volumeID{Store: vp.Store, Vol: volumeNameFor(req.GetName())}.String(),
		locks: &c.locks}.begin()
	if err != nil {
		return nil, err
	}
	defer op.end()
	id := op.id
	st, err := c.store(ctx, vp.Store, req.GetSecrets())
	if err != nil {
		return nil, op.fail(err)
	}
	key, err := encryptionKey(req.GetSecrets())
	if err != nil {
		return nil, op.fail(err)
	}

	// What the volume's parent must be, and the smallest size it can have.
	src := req.GetVolumeContentSource()
	var parent, parentPrefix string
	var srcSnap snapshotID
	var srcVol volumeID
	switch {
	case src == nil:
	case src.GetSnapshot() != nil:
		srcSnap, err = parseSnapshotID(src.GetSnapshot().GetSnapshotId())
		if err != nil {
			return nil, status.Errorf(codes.NotFound, "source snapshot: %v", err)
		}
		if srcSnap.Store != id.Store {
			return nil, invalidArg("source snapshot %s is in store %q, the new volume in %q: clones stay in their store", srcSnap, srcSnap.Store, id.Store)
		}
		parent = srcSnap.Vol + "@" + srcSnap.Snap
	case src.GetVolume() != nil:
		srcVol, err = parseVolumeID(src.GetVolume().GetVolumeId())
		if err != nil {
			return nil, status.Errorf(codes.NotFound, "source volume: %v", err)
		}
		if srcVol.Store != id.Store {
			return nil, invalidArg("source volume %s is in store %q, the new volume in %q: clones stay in their store", srcVol, srcVol.Store, id.Store)
		}
		if srcVol.Vol == id.Vol {
			return nil, invalidArg("a volume cannot be cloned from itself")
		}
		parentPrefix = srcVol.Vol + "@"
	default:
		return nil, invalidArg("unsupported volume content source")
	}

	resp := func(size int64) *csi.CreateVolumeResponse {
		return &csi.CreateVolumeResponse{Volume: &csi.Volume{
			VolumeId: id.String(), CapacityBytes: size, VolumeContext: vp.context(), ContentSource: src,
		}}
	}
	// An existing volume is this request's if it has the same source and
	// a size within the range.
	checkExisting := func() (*csi.CreateVolumeResponse, bool, error) {
		inf, err := vb.Stat(ctx, st, id.Vol)
		if errors.Is(err, vb.ErrNotFound) {
			return nil, false, nil
		}
		if err != nil {
			return nil, false, op.fail(err)
		}
		sameSource := inf.Parent == parent
		if parentPrefix != "" {
			sameSource = strings.HasPrefix(inf.Parent, parentPrefix)
		}
		if !sameSource {
			return nil, false, status.Errorf(codes.AlreadyExists, "volume %s exists with another content source (parent %q)", id, inf.Parent)
		}
		if !fits(inf.Size, req.GetCapacityRange()) {
			return nil, false, status.Errorf(codes.AlreadyExists, "volume %s exists with %d bytes, outside the requested range", id, inf.Size)
		}
		if key != nil && inf.KEKID != key.src.KEKID() || key == nil && inf.Encrypted && src == nil {
			return nil, false, status.Errorf(codes.AlreadyExists, "volume %s exists with another encryption (encrypted %v, KEK %q; this request's KEK %q)", id, inf.Encrypted, inf.KEKID, key.kekID())
		}
		if want := vp.compression(); src == nil && inf.Compression != want {
			return nil, false, status.Errorf(codes.AlreadyExists, "volume %s exists with compression %s, not %s", id, inf.Compression, want)
		}
		return resp(inf.Size), true, nil
	}
	if r, ok, err := checkExisting(); err != nil || ok {
		return r, err
	}

	switch {
	case src == nil:
		err = vb.CreateVolume(ctx, st, id.Vol, size, vb.CreateOptions{
			Durability: vb.Durability(vp.Durability), Compression: vp.compression(), Keys: key.keys()})
	case src.GetSnapshot() != nil:
		var si vb.SnapshotInfo
		si, err = vb.InspectSnapshot(ctx, st, srcSnap.Vol, srcSnap.Snap)
		if err != nil {
			return nil, toStatus(err, "source snapshot "+srcSnap.String())
		}
		if size, err = cloneSize(size, si.Size, req.GetCapacityRange()); err != nil {
			return nil, err
		}
		if err := checkCloneKey("source snapshot "+srcSnap.String(), si.Encrypted, si.KEKID, key); err != nil {
			return nil, op.fail(err)
		}
		err = vb.Clone(ctx, st, srcSnap.Vol, srcSnap.Snap, id.Vol, size)
	default:
		var inf vb.Info
		inf, err = vb.Stat(ctx, st, srcVol.Vol)
		if err != nil {
			return nil, toStatus(err, "source volume "+srcVol.String())
		}
		if size, err = cloneSize(size, inf.Size, req.GetCapacityRange()); err != nil {
			return nil, err
		}
		if err := checkCloneKey("source volume "+srcVol.String(), inf.Encrypted, inf.KEKID, key); err != nil {
			return nil, op.fail(err)
		}
		err = vb.CloneVolume(ctx, st, srcVol.Vol, id.Vol, size, vb.SnapshotOptions{OwnerWait: c.opts.OwnerWait, MaxSnapshots: c.opts.MaxSnapshotsPerVolume, Logf: logf})
	}
	if errors.Is(err, vb.ErrExists) {
		// Created meanwhile by someone else (another controller, vblock).
		if r, ok, err := checkExisting(); err != nil || ok {
			return r, err
		}
	}
	if err != nil {
		return nil, op.fail(err)
	}
	klog.InfoS("created volume", "volume", id, "size", size, "parent", parent+parentPrefix)
	return resp(size), nil
}

// cloneSize is the size of a clone: at least the source's.
func cloneSize(size, srcSize int64, r *csi.CapacityRange) (int64, error) {
	if size >= srcSize {
		return size, nil
	}
	if r.GetLimitBytes() > 0 && srcSize > r.GetLimitBytes() {
		return 0, status.Errorf(codes.OutOfRange, "the source holds %d bytes, more than limit_bytes %d", srcSize, r.GetLimitBytes())
	}
	return srcSize, nil
}

func logf(format string, args ...any) { klog.InfoS(fmt.Sprintf(format, args...)) }
