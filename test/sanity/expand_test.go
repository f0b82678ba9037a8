package sanity

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/viperblock/viperblock-csi/internal/testutil"
	"github.com/viperblock/viperblock-csi/pkg/driver"
)

// needVirtualSize fails the test unless the plugin loads and takes
// virtual_size=, which a device needs to grow while attached through
// nbdfuse. The plugin built from this checkout always does: a failure here
// is a broken plugin, not a missing capability.
func needVirtualSize(t testing.TB) {
	t.Helper()
	out, err := exec.Command("nbdkit", testutil.Plugin(t), "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("nbdkit %s --help: %v\n%s", testutil.Plugin(t), err, out)
	}
	if !strings.Contains(string(out), "virtual_size=") {
		t.Fatalf("the nbdkit plugin has no virtual_size= parameter (an nbdfuse device cannot grow while attached):\n%s", out)
	}
}

// TestOnlineExpand grows mounted ext4 and xfs volumes: ControllerExpand
// while the volume is staged (its engine in nbdkit grows it on request),
// then NodeExpand (the attached device and the filesystem grow), with the
// data still there and the new space usable. Growing a mounted ext4 needs
// CAP_SYS_RESOURCE; without it (a container may withhold it) the kernel
// refuses resize2fs with EPERM, and the test checks the refusal instead:
// NodeExpand answers FailedPrecondition and the volume stays staged and
// usable at its old size; restaging then grows the ext4 before mounting it.
func TestOnlineExpand(t *testing.T) {
	if testing.Short() {
		t.Skip("stages real volumes; skipped with -short")
	}
	needNodeTools(t)
	needVirtualSize(t)
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

	for _, fs := range []string{"ext4", "xfs"} {
		t.Run(fs, func(t *testing.T) {
			refused := fs == "ext4" && !hasCapability(unix.CAP_SYS_RESOURCE)
			const size, grown = 320 << 20, 640 << 20
			vc := &csi.VolumeCapability{
				AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
				AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fs}},
			}
			vol, err := cl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "grow-" + fs, VolumeCapabilities: []*csi.VolumeCapability{vc},
				CapacityRange: &csi.CapacityRange{RequiredBytes: size},
				Parameters:    map[string]string{driver.ParamStore: "file", driver.ParamDrainInterval: "500ms"}})
			if err != nil {
				t.Fatal(err)
			}
			id := vol.GetVolume().GetVolumeId()
			staging := filepath.Join(dir, "staging-"+fs)
			if _, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging,
				VolumeCapability: vc, VolumeContext: vol.GetVolume().GetVolumeContext()}); err != nil {
				t.Fatal(err)
			}
			payload := []byte(strings.Repeat("viperblock grows online\n", 1000))
			if err := writeSynced(filepath.Join(staging, "before"), payload); err != nil {
				t.Fatal(err)
			}
			before := fsBytes(t, staging)

			exp, err := cl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: id,
				CapacityRange: &csi.CapacityRange{RequiredBytes: grown}, VolumeCapability: vc})
			if err != nil || exp.GetCapacityBytes() != grown || !exp.GetNodeExpansionRequired() {
				t.Fatalf("controller expand: %v %v", exp, err)
			}
			nexp, err := node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: id, VolumePath: staging,
				CapacityRange: &csi.CapacityRange{RequiredBytes: grown}, VolumeCapability: vc})
			bigSize := 400 << 20 // more than the volume had before growing
			if refused {
				// No CAP_SYS_RESOURCE: the kernel refuses resize2fs (EPERM)
				// and the driver says the node is not in a state to grow
				// the filesystem; the filesystem keeps its size and works.
				if status.Code(err) != codes.FailedPrecondition {
					t.Fatalf("node expand of a mounted ext4 without CAP_SYS_RESOURCE: %v %v, want FailedPrecondition", nexp, err)
				}
				t.Logf("node expand refused without CAP_SYS_RESOURCE, as expected: %v", err)
				if after := fsBytes(t, staging); after != before {
					t.Fatalf("filesystem has %d bytes after a refused growth, %d before", after, before)
				}
				bigSize = 64 << 20
			} else {
				if err != nil || nexp.GetCapacityBytes() != grown {
					t.Fatalf("node expand: %v %v", nexp, err)
				}
				if after := fsBytes(t, staging); after < before+(grown-size)*8/10 {
					t.Fatalf("filesystem has %d bytes after growing, %d before", after, before)
				}
			}
			// The new space (or, refused, the old) is usable and the old
			// data intact.
			big := make([]byte, bigSize)
			for i := range big {
				big[i] = byte(i / 4096)
			}
			if err := writeSynced(filepath.Join(staging, "after"), big); err != nil {
				t.Fatalf("write %d MiB after node expand: %v", bigSize>>20, err)
			}
			if b, err := os.ReadFile(filepath.Join(staging, "before")); err != nil || string(b) != string(payload) {
				t.Fatalf("data written before growing: %v", err)
			}
			if _, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
				t.Fatal(err)
			}
			if refused {
				// Restaging grows the unmounted ext4 first, which needs no
				// CAP_SYS_RESOURCE: the growth the kernel refused online
				// happens here, with every file intact.
				if _, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging,
					VolumeCapability: vc, VolumeContext: vol.GetVolume().GetVolumeContext()}); err != nil {
					t.Fatalf("restage after a refused online growth: %v", err)
				}
				if after := fsBytes(t, staging); after < before+(grown-size)*8/10 {
					t.Fatalf("filesystem has %d bytes after restaging, %d before growing", after, before)
				}
				if b, err := os.ReadFile(filepath.Join(staging, "before")); err != nil || string(b) != string(payload) {
					t.Fatalf("data written before growing, after restaging: %v", err)
				}
				if _, err := node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: id, VolumePath: staging,
					CapacityRange: &csi.CapacityRange{RequiredBytes: grown}, VolumeCapability: vc}); err != nil {
					t.Fatalf("node expand after the offline growth (nothing left to do): %v", err)
				}
				if _, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := cl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A raw block volume grows while published: the device node at the
// target shows the new size.
func TestOnlineExpandBlock(t *testing.T) {
	if testing.Short() {
		t.Skip("stages real volumes; skipped with -short")
	}
	needNodeTools(t)
	needVirtualSize(t)
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
	vc := &csi.VolumeCapability{
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
	}
	vol, err := cl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "grow-block", VolumeCapabilities: []*csi.VolumeCapability{vc},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 64 << 20},
		Parameters:    map[string]string{driver.ParamStore: "file", driver.ParamDrainInterval: "500ms"}})
	if err != nil {
		t.Fatal(err)
	}
	id := vol.GetVolume().GetVolumeId()
	staging, target := filepath.Join(dir, "staging-block"), filepath.Join(dir, "pod", "dev")
	os.MkdirAll(staging, 0o750)
	if _, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: vc}); err != nil {
		t.Fatal(err)
	}
	if _, err := node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: vc}); err != nil {
		t.Fatal(err)
	}
	if got := devBytes(t, target); got != 64<<20 {
		t.Fatalf("published device has %d bytes", got)
	}
	if _, err := cl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: id, CapacityRange: &csi.CapacityRange{RequiredBytes: 96 << 20}}); err != nil {
		t.Fatal(err)
	}
	if _, err := node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: id, VolumePath: target, VolumeCapability: vc,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 96 << 20}}); err != nil {
		t.Fatal(err)
	}
	if got := devBytes(t, target); got != 96<<20 {
		t.Fatalf("device has %d bytes after growing", got)
	}
	stats, err := node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: target})
	if err != nil || stats.GetUsage()[0].GetTotal() != 96<<20 {
		t.Fatalf("stats: %v %v", stats, err)
	}
	if _, err := node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	if _, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}
}

func devBytes(t *testing.T, path string) int64 {
	t.Helper()
	out, err := exec.Command("blockdev", "--getsize64", path).Output()
	if err != nil {
		t.Fatalf("blockdev %s: %v", path, err)
	}
	n, _ := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	return n
}

func fsBytes(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Blocks) * st.Bsize
}

// hasCapability reports whether this process has capability c in its
// effective set.
func hasCapability(c int) bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "CapEff:"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && n&(1<<c) != 0
		}
	}
	return false
}
