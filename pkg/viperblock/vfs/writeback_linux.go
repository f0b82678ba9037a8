package vfs

import "golang.org/x/sys/unix"

// startWriteback starts writing the file's dirty pages to disk without
// waiting for them (sync_file_range SYNC_FILE_RANGE_WRITE).
func (f osFile) startWriteback() {
	_ = unix.SyncFileRange(int(f.Fd()), 0, 0, unix.SYNC_FILE_RANGE_WRITE)
}
