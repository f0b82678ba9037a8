//go:build !linux

package vfs

func (f osFile) startWriteback() {}

func (f osFile) dataSync() error { return f.Sync() }

func (f osFile) willNeed() {}
