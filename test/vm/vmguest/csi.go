//go:build linux

package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

const csiDir = "/tmp/csi"

// csiNode runs the node plugin binary and drives it over gRPC.
func csiNode(c *checker, nodeBin, plugin string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	storeURL := "file://" + filepath.Join(csiDir, "store")
	sock := filepath.Join(csiDir, "csi.sock")
	logPath := filepath.Join(csiDir, "node.log")
	var node csi.NodeClient
	var proc *exec.Cmd
	exited := make(chan struct{})

	c.check("csi: create two volumes in a file store", func() error {
		if err := os.MkdirAll(filepath.Join(csiDir, "store"), 0o700); err != nil {
			return err
		}
		st, err := backend.Open(ctx, storeURL)
		if err != nil {
			return err
		}
		defer st.Close()
		if err := vb.CreateOnly(ctx, st, "fs-vol", 128<<20); err != nil {
			return err
		}
		return vb.CreateOnly(ctx, st, "blk-vol", 64<<20)
	})
	c.check("csi: start the node plugin (cmd/node, --attacher nbd)", func() error {
		logf, err := os.Create(logPath)
		if err != nil {
			return err
		}
		defer logf.Close()
		proc = exec.Command(nodeBin, "--endpoint", "unix://"+sock, "--node-id", "vm-guest",
			"--store", "default="+storeURL, "--state-dir", filepath.Join(csiDir, "state"),
			"--wal-dir", filepath.Join(csiDir, "wal"), "--attach-dir", "/run/vb-csi-attach",
			"--attacher", "nbd", "--plugin", plugin, "--http-address", "0", "--v", "2")
		proc.Stdout, proc.Stderr = logf, logf
		if err := proc.Start(); err != nil {
			return err
		}
		go func() { proc.Wait(); close(exited) }()
		for deadline := time.Now().Add(time.Minute); ; {
			if _, err := os.Stat(sock); err == nil {
				break
			}
			select {
			case <-exited:
				return fmt.Errorf("node plugin exited: %s", tail(logPath))
			default:
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("node plugin does not listen: %s", tail(logPath))
			}
			time.Sleep(50 * time.Millisecond)
		}
		conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		node = csi.NewNodeClient(conn)
		info, err := node.NodeGetInfo(ctx, &csi.NodeGetInfoRequest{})
		if err != nil {
			return err
		}
		if info.GetNodeId() != "vm-guest" {
			return fmt.Errorf("NodeGetInfo: node id %q", info.GetNodeId())
		}
		return nil
	})
	defer func() {
		if proc != nil && proc.Process != nil {
			proc.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(20 * time.Second):
				proc.Process.Kill()
			}
		}
		if c.failed > 0 {
			fmt.Printf("node plugin log (tail):\n%s\n", tail(logPath))
		}
	}()

	mode := &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}
	fsCap := &csi.VolumeCapability{AccessMode: mode,
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "ext4"}}}
	blkCap := &csi.VolumeCapability{AccessMode: mode, AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}}

	// A filesystem volume.
	fsID, staging, target := "default/fs-vol", filepath.Join(csiDir, "staging-fs"), filepath.Join(csiDir, "pod-fs")
	sums := map[string]string{}
	var fsDev string
	stagePublish := func(id, staging, target string, vc *csi.VolumeCapability) error {
		if _, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: vc}); err != nil {
			return fmt.Errorf("NodeStageVolume: %v", err)
		}
		if _, err := node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: vc}); err != nil {
			return fmt.Errorf("NodePublishVolume: %v", err)
		}
		return nil
	}
	unpublishUnstage := func(id, staging, target, dev string) error {
		if _, err := node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
			return fmt.Errorf("NodeUnpublishVolume: %v", err)
		}
		if _, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
			return fmt.Errorf("NodeUnstageVolume: %v", err)
		}
		if isMounted(target) || isMounted(staging) {
			return fmt.Errorf("still mounted after unstage")
		}
		if dev != "" && connected(dev) {
			return fmt.Errorf("%s still connected after unstage", dev)
		}
		return nil
	}
	c.check("csi: NodeStage (ext4 on kernel NBD) + NodePublish", func() error {
		if err := stagePublish(fsID, staging, target, fsCap); err != nil {
			return err
		}
		fsDev = mountSource(staging)
		if !strings.HasPrefix(fsDev, "/dev/nbd") {
			return fmt.Errorf("staging path mounted from %q, not a kernel NBD device", fsDev)
		}
		if !isMounted(target) {
			return fmt.Errorf("target %s not mounted", target)
		}
		fmt.Printf("staged %s on %s\n", fsID, fsDev)
		return nil
	})
	c.check("csi: write files in the published volume", func() error {
		if err := writeFiles(target, "pod", 4, 256<<10, sums); err != nil {
			return err
		}
		return run("sync")
	})
	c.check("csi: online expansion: grow the open volume, NodeExpandVolume grows the mounted ext4", func() error {
		var before unix.Statfs_t
		if err := unix.Statfs(target, &before); err != nil {
			return err
		}
		st, err := backend.Open(ctx, storeURL)
		if err != nil {
			return err
		}
		defer st.Close()
		// The volume is open in nbdkit: Expand asks its owner to grow it,
		// as ControllerExpandVolume does.
		const grown = 256 << 20
		size, err := vb.Expand(ctx, st, "fs-vol", grown, time.Minute)
		if err != nil {
			return fmt.Errorf("expand in the store: %v", err)
		}
		if size != grown {
			return fmt.Errorf("expand: size %d, want %d", size, grown)
		}
		resp, err := node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: fsID, VolumePath: target,
			StagingTargetPath: staging, CapacityRange: &csi.CapacityRange{RequiredBytes: grown}, VolumeCapability: fsCap})
		if err != nil {
			return fmt.Errorf("NodeExpandVolume: %v", err)
		}
		if resp.GetCapacityBytes() != grown {
			return fmt.Errorf("NodeExpandVolume: capacity %d, want %d", resp.GetCapacityBytes(), grown)
		}
		var after unix.Statfs_t
		if err := unix.Statfs(target, &after); err != nil {
			return err
		}
		b, a := int64(before.Blocks)*before.Bsize, int64(after.Blocks)*after.Bsize
		fmt.Printf("ext4 on %s grew online from %d to %d bytes\n", fsDev, b, a)
		if a < b+(grown-128<<20)*9/10 {
			return fmt.Errorf("filesystem did not grow: %d -> %d bytes", b, a)
		}
		// Writes land in the new space and survive the unstage below.
		if err := writeFiles(target, "grown", 2, 1<<20, sums); err != nil {
			return err
		}
		return run("sync")
	})
	c.check("csi: NodeUnpublish + NodeUnstage (detach, drain)", func() error { return unpublishUnstage(fsID, staging, target, fsDev) })
	c.check("csi: stage again: the files are back from the store", func() error {
		if err := stagePublish(fsID, staging, target, fsCap); err != nil {
			return err
		}
		fsDev = mountSource(staging)
		if err := verifyFiles(sums); err != nil {
			return err
		}
		return unpublishUnstage(fsID, staging, target, fsDev)
	})

	// A raw block volume: NodePublish bind-mounts the device node on a
	// file, as for a KubeVirt disk.
	blkID, bstaging, btarget := "default/blk-vol", filepath.Join(csiDir, "staging-blk"), filepath.Join(csiDir, "pod-blk", "disk")
	pattern := make([]byte, 1<<20)
	rand.Read(pattern)
	var blkDev string
	c.check("csi: NodeStage + NodePublish (raw block)", func() error {
		if err := stagePublish(blkID, bstaging, btarget, blkCap); err != nil {
			return err
		}
		var st syscall.Stat_t
		if err := syscall.Stat(btarget, &st); err != nil {
			return err
		}
		if st.Mode&syscall.S_IFMT != syscall.S_IFBLK {
			return fmt.Errorf("%s is not a block device (mode %o)", btarget, st.Mode)
		}
		uevent := fmt.Sprintf("/sys/dev/block/%d:%d/uevent", unix.Major(st.Rdev), unix.Minor(st.Rdev))
		b, err := os.ReadFile(uevent)
		if err != nil {
			return err
		}
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "DEVNAME="); ok {
				blkDev = "/dev/" + v
			}
		}
		if !strings.HasPrefix(blkDev, "/dev/nbd") {
			return fmt.Errorf("published device is %s, not a kernel NBD device", blkDev)
		}
		fmt.Printf("published %s (%s) at %s\n", blkID, blkDev, btarget)
		return nil
	})
	c.check("csi: raw block write + fsync + read back", func() error {
		f, err := os.OpenFile(btarget, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		if _, err := f.WriteAt(pattern, 5<<20); err != nil {
			return err
		}
		if err := f.Sync(); err != nil {
			return err
		}
		got := make([]byte, len(pattern))
		if _, err := f.ReadAt(got, 5<<20); err != nil {
			return err
		}
		if !bytes.Equal(got, pattern) {
			return fmt.Errorf("read back differs")
		}
		return nil
	})
	c.check("csi: NodeUnpublish + NodeUnstage (raw block)", func() error { return unpublishUnstage(blkID, bstaging, btarget, blkDev) })
	c.check("csi: stage the raw block volume again: the data is back", func() error {
		if err := stagePublish(blkID, bstaging, btarget, blkCap); err != nil {
			return err
		}
		f, err := os.Open(btarget)
		if err != nil {
			return err
		}
		got := make([]byte, len(pattern))
		_, err = f.ReadAt(got, 5<<20)
		f.Close()
		if err != nil {
			return err
		}
		if !bytes.Equal(got, pattern) {
			return fmt.Errorf("the raw block data did not survive unstage and stage")
		}
		return unpublishUnstage(blkID, bstaging, btarget, "")
	})
}

// mountSource returns the device mounted at path, per /proc/mounts.
func mountSource(path string) string {
	b, _ := os.ReadFile("/proc/mounts")
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[1] == path {
			return f[0]
		}
	}
	return ""
}

// tail returns the last lines of a file.
func tail(path string) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 30 {
		lines = lines[len(lines)-30:]
	}
	return strings.Join(lines, "\n")
}
