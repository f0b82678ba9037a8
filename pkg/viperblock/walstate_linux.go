package viperblock

import (
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// fileSizeBirth returns a file's size and birth time (statx), or its
// modification time where the filesystem does not record births.
func fileSizeBirth(path string) (int64, time.Time, error) {
	var sx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, path, 0, unix.STATX_BTIME|unix.STATX_SIZE|unix.STATX_MTIME, &sx); err != nil {
		return 0, time.Time{}, &os.PathError{Op: "statx", Path: path, Err: err}
	}
	t := time.Unix(sx.Mtime.Sec, int64(sx.Mtime.Nsec))
	if sx.Mask&unix.STATX_BTIME != 0 {
		t = time.Unix(sx.Btime.Sec, int64(sx.Btime.Nsec))
	}
	return int64(sx.Size), t, nil
}
