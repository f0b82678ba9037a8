package vfs

import "golang.org/x/sys/unix"

// startWriteback starts writing the file's dirty pages to disk without
// waiting for them (sync_file_range SYNC_FILE_RANGE_WRITE).
func (f osFile) startWriteback() {
	_ = unix.SyncFileRange(int(f.Fd()), 0, 0, unix.SYNC_FILE_RANGE_WRITE)
}

// dataSync is fdatasync: the data and what reading it back needs (the
// size), without timestamps.
func (f osFile) dataSync() error { return unix.Fdatasync(int(f.Fd())) }

// allocate is fallocate (mode 0): it reserves blocks and grows the size.
func (f osFile) allocate(size int64) error {
	if cur, err := f.Size(); err != nil || cur >= size {
		return err
	}
	return unix.Fallocate(int(f.Fd()), 0, 0, size)
}

// willNeed is posix_fadvise POSIX_FADV_WILLNEED over the whole file: it
// starts reading what is not cached, without waiting.
func (f osFile) willNeed() { _ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_WILLNEED) }
