package vfs

import (
	"os"
)

// Op names an operation that an Injector can fail.
type Op string

// The operations Error can fail.
const (
	OpCreate Op = "create"
	OpOpen   Op = "open"
	OpWrite  Op = "write"
	OpRead   Op = "read"
	OpSync   Op = "sync"
	OpRename Op = "rename"
	OpRemove Op = "remove"
	OpMkdir  Op = "mkdir"
)

// Injector decides whether an operation on a path fails; nil means proceed.
type Injector func(op Op, name string) error

// Error wraps fs so that inj may fail any operation.
func Error(fs FS, inj Injector) FS { return errFS{fs, inj} }

type errFS struct {
	FS
	inj Injector
}

type errFile struct {
	File
	name string
	inj  Injector
}

func (e errFS) wrap(name string, f File, err error) (File, error) {
	if err != nil {
		return nil, err
	}
	return errFile{f, name, e.inj}, nil
}

func (e errFS) Create(name string) (File, error) {
	if err := e.inj(OpCreate, name); err != nil {
		return nil, err
	}
	f, err := e.FS.Create(name)
	return e.wrap(name, f, err)
}

func (e errFS) Open(name string) (File, error) {
	if err := e.inj(OpOpen, name); err != nil {
		return nil, err
	}
	f, err := e.FS.Open(name)
	return e.wrap(name, f, err)
}

func (e errFS) OpenReadWrite(name string) (File, error) {
	if err := e.inj(OpOpen, name); err != nil {
		return nil, err
	}
	f, err := e.FS.OpenReadWrite(name)
	return e.wrap(name, f, err)
}

func (e errFS) OpenDir(name string) (File, error) {
	if err := e.inj(OpOpen, name); err != nil {
		return nil, err
	}
	f, err := e.FS.OpenDir(name)
	return e.wrap(name, f, err)
}

func (e errFS) Remove(name string) error {
	if err := e.inj(OpRemove, name); err != nil {
		return err
	}
	return e.FS.Remove(name)
}

func (e errFS) Rename(o, n string) error {
	if err := e.inj(OpRename, n); err != nil {
		return err
	}
	return e.FS.Rename(o, n)
}

func (e errFS) MkdirAll(dir string, perm os.FileMode) error {
	if err := e.inj(OpMkdir, dir); err != nil {
		return err
	}
	return e.FS.MkdirAll(dir, perm)
}

// PartialWrite, returned by an Injector for OpWrite, makes the write store
// its first N bytes (at most) and then fail with Err, as a write that ran
// out of space part-way does.
type PartialWrite struct {
	N   int
	Err error
}

func (e *PartialWrite) Error() string { return e.Err.Error() }
func (e *PartialWrite) Unwrap() error { return e.Err }

func (f errFile) Write(p []byte) (int, error) {
	if err := f.inj(OpWrite, f.name); err != nil {
		if pw, ok := err.(*PartialWrite); ok {
			n, werr := f.File.Write(p[:min(pw.N, len(p))])
			if werr != nil {
				return n, werr
			}
			return n, pw.Err
		}
		return 0, err
	}
	return f.File.Write(p)
}

func (f errFile) ReadAt(p []byte, off int64) (int, error) {
	if err := f.inj(OpRead, f.name); err != nil {
		return 0, err
	}
	return f.File.ReadAt(p, off)
}

func (f errFile) Sync() error {
	if err := f.inj(OpSync, f.name); err != nil {
		return err
	}
	return f.File.Sync()
}
