package driver

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"
)

// Mounter is what the node service needs from the host's mount table and
// filesystem tools. NewMounter returns the real one (k8s.io/mount-utils);
// tests substitute fakes.
type Mounter interface {
	// FormatAndMount mounts source at target, first making a filesystem of
	// type fstype (with formatOptions) if source holds none.
	FormatAndMount(source, target, fstype string, options, formatOptions []string) error
	// Mount mounts source at target (fstype "" and option "bind" for bind
	// mounts).
	Mount(source, target, fstype string, options []string) error
	// Unmount unmounts target; a busy target is an error wrapping errBusy.
	Unmount(target string) error
	// IsMountPoint reports whether path is a mount point (bind mounts of
	// files included); a missing path is an error wrapping os.ErrNotExist.
	IsMountPoint(path string) (bool, error)
	// ResizeFS grows the filesystem on device, mounted at path, to the
	// device's size if it is smaller.
	ResizeFS(device, path string) error
	// GrowUnmounted grows an ext2/3/4 filesystem on an unmounted device to
	// the device's size if it is smaller (e2fsck -f, then resize2fs). It
	// does nothing for other filesystems (xfs grows only while mounted) or
	// a device without one. Growing offline needs no CAP_SYS_RESOURCE,
	// which the kernel demands for growing a mounted ext4.
	GrowUnmounted(device string) error
	// DeviceSize returns the size of a block device in bytes.
	DeviceSize(device string) (int64, error)
}

// NewMounter returns the host mounter.
func NewMounter() Mounter {
	ex := utilexec.New()
	return &hostMounter{m: mount.NewSafeFormatAndMount(mount.NewWithoutSystemd(""), ex), exec: ex}
}

type hostMounter struct {
	m    *mount.SafeFormatAndMount
	exec utilexec.Interface
}

func (h *hostMounter) FormatAndMount(source, target, fstype string, options, formatOptions []string) error {
	return h.m.FormatAndMountSensitiveWithFormatOptions(source, target, fstype, options, nil, formatOptions)
}

func (h *hostMounter) Mount(source, target, fstype string, options []string) error {
	return h.m.Mount(source, target, fstype, options)
}

func (h *hostMounter) Unmount(target string) error {
	err := h.m.Unmount(target)
	if err != nil && strings.Contains(strings.ToLower(err.Error()), "busy") {
		return fmt.Errorf("%w: %v", errBusy, err)
	}
	return err
}

func (h *hostMounter) IsMountPoint(path string) (bool, error) {
	return h.m.IsMountPoint(path)
}

func (h *hostMounter) ResizeFS(device, path string) error {
	r := mount.NewResizeFs(h.exec)
	need, err := r.NeedResize(device, path)
	if err != nil || !need {
		return err
	}
	if _, err = r.Resize(device, path); err != nil && refusedByKernel(err) {
		return fmt.Errorf("%w (does the node plugin run privileged, with CAP_SYS_RESOURCE?): %v", errNotPermitted, err)
	}
	return err
}

func (h *hostMounter) GrowUnmounted(device string) error {
	format, err := h.m.GetDiskFormat(device)
	if err != nil || (format != "ext2" && format != "ext3" && format != "ext4") {
		return err
	}
	out, err := h.exec.Command("dumpe2fs", "-h", device).CombinedOutput()
	if err != nil {
		return fmt.Errorf("dumpe2fs -h %s: %v: %s", device, err, out)
	}
	blocks, bsize, err := parseExtSize(string(out))
	if err != nil {
		return fmt.Errorf("dumpe2fs -h %s: %w", device, err)
	}
	devSize, err := blockDeviceSize(device)
	if err != nil {
		return err
	}
	if devSize-blocks*bsize < bsize {
		return nil // already the device's size
	}
	// resize2fs insists on a freshly checked filesystem when it is not
	// mounted. e2fsck exits 1 when it fixed something, which is fine here.
	out, err = h.exec.Command("e2fsck", "-f", "-p", device).CombinedOutput()
	if ee, ok := err.(utilexec.ExitError); err != nil && !(ok && ee.ExitStatus() == 1) {
		return fmt.Errorf("e2fsck -f -p %s: %v: %s", device, err, out)
	}
	if out, err := h.exec.Command("resize2fs", device).CombinedOutput(); err != nil {
		return fmt.Errorf("resize2fs %s: %v: %s", device, err, out)
	}
	return nil
}

// parseExtSize reads the block count and block size from `dumpe2fs -h`.
func parseExtSize(out string) (blocks, bsize int64, err error) {
	for _, l := range strings.Split(out, "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		switch strings.TrimSpace(k) {
		case "Block count":
			blocks, err = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		case "Block size":
			bsize, err = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
		if err != nil {
			return 0, 0, fmt.Errorf("bad %q line: %w", strings.TrimSpace(k), err)
		}
	}
	if blocks <= 0 || bsize <= 0 {
		return 0, 0, fmt.Errorf("no block count or block size in its output")
	}
	return blocks, bsize, nil
}

// refusedByKernel tells whether a resize tool's error is the kernel
// refusing the caller (EPERM/EACCES), as opposed to a broken filesystem.
func refusedByKernel(err error) bool {
	if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) {
		return true
	}
	msg := strings.ToLower(err.Error())
	return strings.Contains(msg, "operation not permitted") || strings.Contains(msg, "permission denied")
}

func (h *hostMounter) DeviceSize(device string) (int64, error) { return blockDeviceSize(device) }

// blockDeviceSize asks the kernel for a block device's size (BLKGETSIZE64).
func blockDeviceSize(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var size uint64
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&size))); errno != 0 {
		return 0, fmt.Errorf("BLKGETSIZE64 %s: %w", path, errno)
	}
	return int64(size), nil
}

// isBlockDevice reports whether path is a block device node.
func isBlockDevice(path string) bool {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return false
	}
	return st.Mode&unix.S_IFMT == unix.S_IFBLK
}

// isNotExist reports a missing path (also through mount-utils' wrapping).
func isNotExist(err error) bool { return errors.Is(err, os.ErrNotExist) || os.IsNotExist(err) }
