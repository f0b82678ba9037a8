package vfs

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// LockMode is the kind of advisory lock TryLockFile takes on an open file.
type LockMode int

const (
	// LockShared may be held by many open files at once.
	LockShared LockMode = iota
	// LockExclusive excludes every other lock on the file.
	LockExclusive
)

// TryLockFile takes an advisory lock (flock) on the open file f without
// waiting. It fails with ErrLocked when another open file holds a
// conflicting lock, and with errors.ErrUnsupported when f cannot be locked.
// Closing f releases the lock. Locks belong to an open file, not to a path:
// a rename keeps them, and a lock on a file another process has open
// conflicts with that process's lock.
func TryLockFile(f File, m LockMode) error {
	if l, ok := f.(interface{ tryLock(LockMode) error }); ok {
		return l.tryLock(m)
	}
	return errors.ErrUnsupported
}

// IsFile reports whether name currently names the file f has open (false
// if name does not exist). It fails with errors.ErrUnsupported when f
// cannot tell.
func IsFile(f File, name string) (bool, error) {
	if s, ok := f.(interface{ isFile(string) (bool, error) }); ok {
		return s.isFile(name)
	}
	return false, errors.ErrUnsupported
}

func (f osFile) tryLock(m LockMode) error {
	how := syscall.LOCK_SH | syscall.LOCK_NB
	if m == LockExclusive {
		how = syscall.LOCK_EX | syscall.LOCK_NB
	}
	for {
		err := syscall.Flock(int(f.Fd()), how)
		switch err {
		case nil:
			return nil
		case syscall.EINTR:
			continue
		case syscall.EWOULDBLOCK:
			return fmt.Errorf("%w: %s", ErrLocked, f.Name())
		default:
			return err
		}
	}
}

func (f osFile) isFile(name string) (bool, error) {
	st, err := os.Stat(name)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return false, nil
		}
		return false, err
	}
	mine, err := f.Stat()
	if err != nil {
		return false, err
	}
	return os.SameFile(st, mine), nil
}

// MemFS: a node counts its shared holders and marks an exclusive one; a
// memFile remembers what it holds and gives it back on Close.

func (f *memFile) tryLock(m LockMode) error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	f.unlockLocked()
	n := f.n
	if n.lockExcl || (m == LockExclusive && n.lockShared > 0) {
		return ErrLocked
	}
	if m == LockExclusive {
		n.lockExcl = true
	} else {
		n.lockShared++
	}
	f.held = m + 1
	return nil
}

// unlockLocked releases f's lock; f.fs.mu must be held.
func (f *memFile) unlockLocked() {
	switch f.held {
	case LockShared + 1:
		f.n.lockShared--
	case LockExclusive + 1:
		f.n.lockExcl = false
	}
	f.held = 0
}

func (f *memFile) isFile(name string) (bool, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	n, err := f.fs.lookup(name)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return false, nil
		}
		return false, err
	}
	return n == f.n, nil
}

// The error-injecting wrapper passes locks and identity through.

func (f errFile) tryLock(m LockMode) error { return TryLockFile(f.File, m) }

func (f errFile) isFile(name string) (bool, error) { return IsFile(f.File, name) }
