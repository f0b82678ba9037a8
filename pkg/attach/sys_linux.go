//go:build linux

package attach

// Kernel interfaces: loop ioctls (the only unsafe code in the package),
// sysfs and mountinfo readers, block device helpers.

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

// Loop ioctls and struct loop_info64, from <linux/loop.h>.
const (
	loopClrFD         = 0x4C01
	loopSetStatus64   = 0x4C04
	loopGetStatus64   = 0x4C05
	loopSetCapacity   = 0x4C07
	loFlagsAutoclear  = 4
	loNameSize        = 64
	loKeySize         = 32
	loopInfo64Size    = 232
	loopInfo64LimitAt = 32 // offset of lo_sizelimit
)

type loopInfo64 struct {
	Device         uint64
	Inode          uint64
	Rdevice        uint64
	Offset         uint64
	Sizelimit      uint64
	Number         uint32
	EncryptType    uint32
	EncryptKeySize uint32
	Flags          uint32
	FileName       [loNameSize]byte
	CryptName      [loNameSize]byte
	EncryptKey     [loKeySize]byte
	Init           [2]uint64
}

// The layout must match the kernel's.
var _ [loopInfo64Size]byte = [unsafe.Sizeof(loopInfo64{})]byte{}
var _ [loopInfo64LimitAt]byte = [unsafe.Offsetof(loopInfo64{}.Sizelimit)]byte{}

func ioctl(fd uintptr, req uintptr, arg uintptr) error {
	for {
		_, _, e := syscall.Syscall(syscall.SYS_IOCTL, fd, req, arg)
		if e == syscall.EINTR {
			continue
		}
		if e != 0 {
			return e
		}
		return nil
	}
}

// loopSetSizeLimit sets the size limit of a live loop device and makes the
// kernel apply it (LOOP_SET_STATUS64; then LOOP_SET_CAPACITY if the
// capacity did not follow, as on kernels that only recompute it there).
func loopSetSizeLimit(dev string, limit int64) error {
	f, err := os.OpenFile(dev, os.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	var info loopInfo64
	if err := ioctl(f.Fd(), loopGetStatus64, uintptr(unsafe.Pointer(&info))); err != nil {
		return fmt.Errorf("LOOP_GET_STATUS64 %s: %w", dev, err)
	}
	info.Sizelimit = uint64(limit)
	var serr error
	for i := 0; i < 50; i++ {
		// Old kernels answer EAGAIN while the device's page cache is
		// being dropped.
		if serr = ioctl(f.Fd(), loopSetStatus64, uintptr(unsafe.Pointer(&info))); serr != syscall.EAGAIN {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if serr != nil {
		return fmt.Errorf("LOOP_SET_STATUS64 %s: %w", dev, serr)
	}
	if sz, err := blockSize(dev); err == nil && sz == limit {
		return nil
	}
	if err := ioctl(f.Fd(), loopSetCapacity, 0); err != nil {
		return fmt.Errorf("LOOP_SET_CAPACITY %s: %w", dev, err)
	}
	return nil
}

// loopClear detaches a loop device from file (what losetup -d does), but
// only while the device is still backed by file: a device found through
// sysfs can be released and taken by another attachment (another volume's)
// before it is opened here, and clearing that one would pull a device out
// from under a mounted filesystem. The identity is checked on the open
// descriptor, which keeps the device from being released and reused until
// the clear. A device that is unbound or backed by something else is left
// alone (nil). If the device is still open elsewhere the kernel detaches it
// when the last user closes it (autoclear).
func loopClear(dev, file string) error {
	f, err := os.OpenFile(dev, os.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	var info loopInfo64
	if err := ioctl(f.Fd(), loopGetStatus64, uintptr(unsafe.Pointer(&info))); err != nil {
		if err == syscall.ENXIO {
			return nil // unbound: already detached
		}
		// The status stats the backing file, which fails when that file
		// is on a dead FUSE mount (nbdfuse was killed: ENOTCONN). The
		// kernel's record of the backing file's path (sysfs, read
		// without touching the file) identifies it then.
		back, serr := readSysfs(filepath.Join(sysBlock(dev), "loop", "backing_file"))
		if serr != nil {
			return fmt.Errorf("LOOP_GET_STATUS64 %s: %w (and its backing file is unknown: %v)", dev, err, serr)
		}
		if back != file {
			return nil
		}
	} else if !loopBackedBy(&info, file) {
		return nil
	}
	if err := ioctl(f.Fd(), loopClrFD, 0); err != nil && err != syscall.ENXIO {
		return fmt.Errorf("LOOP_CLR_FD %s: %w", dev, err)
	}
	return nil
}

// loopBackedBy reports whether a loop device's status names file: by its
// device and inode when file can be stat'ed, else by the (possibly
// truncated) name the kernel recorded.
func loopBackedBy(info *loopInfo64, file string) bool {
	var st syscall.Stat_t
	if err := syscall.Stat(file, &st); err == nil {
		return info.Device == uint64(st.Dev) && info.Inode == st.Ino
	}
	name := string(info.FileName[:])
	if i := strings.IndexByte(name, 0); i >= 0 {
		name = name[:i]
	}
	return name != "" && strings.HasPrefix(file, name)
}

// sysBlock is /sys/block/<name of dev>.
func sysBlock(dev string) string { return filepath.Join("/sys/block", filepath.Base(dev)) }

func readSysfs(p string) (string, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return "", err
	}
	return strings.TrimRight(string(b), "\n"), nil
}

// capRequests lowers a block device's largest request (max_sectors_kb in
// its sysfs queue directory) to the server's advertised maximum, max bytes
// (0: none stated), when the kernel would send more. The kernel's NBD
// client does not learn the server's block size constraints, and it may
// send requests of up to 32 MiB; a server reads every request into a
// buffer that its worker thread keeps (see the plugin's memory.go), so
// larger requests than it advertised would take memory it did not budget.
// A maximum below a page is left alone: the kernel refuses it.
func capRequests(queue string, max uint32) error {
	want := int64(max) >> 10
	if want < 4 {
		return nil
	}
	p := filepath.Join(queue, "max_sectors_kb")
	s, err := readSysfs(p)
	if err != nil {
		return fmt.Errorf("largest request: %w", err)
	}
	cur, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return fmt.Errorf("largest request: %s: %q", p, s)
	}
	if cur <= want {
		return nil
	}
	if err := os.WriteFile(p, []byte(strconv.FormatInt(want, 10)), 0); err != nil {
		return fmt.Errorf("largest request to the server's %d KiB: %w", want, err)
	}
	if s, err := readSysfs(p); err != nil || s != strconv.FormatInt(want, 10) {
		return fmt.Errorf("largest request: %s reads %q after writing %d (%v)", p, s, want, err)
	}
	return nil
}

// blockSize is the device's size in bytes, from sysfs.
func blockSize(dev string) (int64, error) {
	s, err := readSysfs(filepath.Join(sysBlock(dev), "size"))
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, err
	}
	return n * 512, nil
}

// loopBacking is the backing file of a loop device ("" if none).
func loopBacking(dev string) string {
	s, err := readSysfs(filepath.Join(sysBlock(dev), "loop", "backing_file"))
	if err != nil {
		return ""
	}
	return s
}

// loopsOf lists the loop devices whose backing file is file.
func loopsOf(file string) []string {
	ms, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	var st syscall.Stat_t
	statOK := syscall.Stat(file, &st) == nil
	var out []string
	for _, m := range ms {
		s, err := readSysfs(m)
		if err != nil || s != file {
			continue
		}
		dev := "/dev/" + filepath.Base(filepath.Dir(filepath.Dir(m)))
		// sysfs holds the path as the attaching process saw it: in another
		// mount namespace (a second node on this kernel, a container) the
		// same path can name another file. The device and inode decide
		// when both can be read.
		if statOK && !loopIs(dev, uint64(st.Dev), st.Ino) {
			continue
		}
		out = append(out, dev)
	}
	return out
}

// loopIs reports whether loop device dev is backed by the file with device
// number fdev and inode ino; true when that cannot be read (the device
// went, or its backing file is on a dead FUSE mount).
func loopIs(dev string, fdev, ino uint64) bool {
	f, err := os.OpenFile(dev, os.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return true
	}
	defer f.Close()
	var info loopInfo64
	if err := ioctl(f.Fd(), loopGetStatus64, uintptr(unsafe.Pointer(&info))); err != nil {
		return true
	}
	return info.Device == fdev && info.Inode == ino
}

// mounted reports whether path is a mount point, and its filesystem type.
func mounted(path string) (bool, string) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false, ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// id parent maj:min root mountpoint options [optional...] - fstype source superopts
		fs := strings.Fields(sc.Text())
		if len(fs) < 10 || unescapeMount(fs[4]) != path {
			continue
		}
		for i := 6; i < len(fs)-1; i++ {
			if fs[i] == "-" {
				return true, fs[i+1]
			}
		}
		return true, ""
	}
	return false, ""
}

// unescapeMount undoes mountinfo's octal escapes (\040 for space, ...).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// devBusy reports whether a block device is mounted or claimed by another
// driver (an exclusive open fails with EBUSY). It cannot see plain opens.
func devBusy(dev string) bool {
	fd, err := syscall.Open(dev, syscall.O_RDONLY|syscall.O_EXCL|syscall.O_CLOEXEC, 0)
	if err != nil {
		return errors.Is(err, syscall.EBUSY)
	}
	syscall.Close(fd)
	return false
}

// flushDev asks the device to write its cache through (fsync on the block
// device: page cache, then a flush request to the driver).
func flushDev(dev string) error {
	f, err := os.OpenFile(dev, os.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// flushDevWithin flushes dev but waits at most d: a server that hangs must
// not hang the caller (what is still pending fails when the device goes).
func flushDevWithin(dev string, d time.Duration) {
	done := make(chan struct{})
	go func() { flushDev(dev); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
	}
}

// unmount unmounts path, retrying while it is busy until deadline.
func unmount(path string, deadline time.Time) error {
	for {
		err := syscall.Unmount(path, 0)
		if err == nil || err == syscall.EINVAL || err == syscall.ENOENT {
			// EINVAL: not a mount point (any more).
			if m, _ := mounted(path); !m {
				return nil
			}
		}
		if err != nil && err != syscall.EBUSY && err != syscall.EINVAL {
			return fmt.Errorf("unmount %s: %w", path, err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: unmount %s: %v", ErrBusy, path, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
