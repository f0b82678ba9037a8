package sanity

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/viperblock/viperblock-csi/pkg/driver"
)

// TestReadOnlyStage writes a file through a writable staging, then stages
// the volume SINGLE_NODE_READER_ONLY: the file reads back, writes fail,
// and the store's ownership is not taken.
func TestReadOnlyStage(t *testing.T) {
	if testing.Short() {
		t.Skip("stages real volumes; skipped with -short")
	}
	needNodeTools(t)
	dir := t.TempDir()
	t.Cleanup(func() { cleanupDir(t, dir) })
	os.MkdirAll(filepath.Join(dir, "store"), 0o700)
	r := newRig(t, "file", "file://"+filepath.Join(dir, "store"), dir, nil)
	defer r.close(t)
	conn, err := grpc.NewClient("unix://"+r.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cl, node := csi.NewControllerClient(conn), csi.NewNodeClient(conn)
	ctx := context.Background()
	capFor := func(m csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
		return &csi.VolumeCapability{AccessMode: &csi.VolumeCapability_AccessMode{Mode: m},
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "ext4"}}}
	}
	rw, ro := capFor(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER), capFor(csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY)
	vol, err := cl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "ro", VolumeCapabilities: []*csi.VolumeCapability{rw},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 64 << 20}, Parameters: map[string]string{driver.ParamStore: "file"}})
	if err != nil {
		t.Fatal(err)
	}
	id := vol.GetVolume().GetVolumeId()
	staging := filepath.Join(dir, "staging")
	if _, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: rw}); err != nil {
		t.Fatal(err)
	}
	if err := writeSynced(filepath.Join(staging, "hello"), []byte("read me")); err != nil {
		t.Fatal(err)
	}
	if _, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}
	if _, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: ro}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(staging, "hello")); err != nil || string(b) != "read me" {
		t.Fatalf("read-only staging: %q %v", b, err)
	}
	if err := os.WriteFile(filepath.Join(staging, "nope"), []byte("x"), 0o600); err == nil {
		t.Fatal("wrote to a read-only staging")
	}
	// A read-only open takes no ownership: the store does not show the
	// volume open (which, unpublished, the controller would flag).
	h, err := cl.ControllerGetVolumeHealth(ctx, &csi.ControllerGetVolumeHealthRequest{VolumeId: id})
	if err != nil || len(h.GetVolumeHealth().GetHealthStatuses()) != 0 {
		t.Fatalf("health during a read-only staging: %v %v", h, err)
	}
	target := filepath.Join(dir, "target")
	if _, err := node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target,
		VolumeCapability: ro, Readonly: true}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(target, "hello")); err != nil || string(b) != "read me" {
		t.Fatalf("read-only target: %q %v", b, err)
	}
	if _, err := node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	if _, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Fatal(err)
	}
}
