package main

import (
	"github.com/viperblock/viperblock-csi/pkg/attach"
)

// newAttacher builds the attacher chosen by --attacher.
// place moves each nbdfuse into the servers' cgroup (nil: none).
func newAttacher(kind, stateDir string, wrapper []string, place func(pid int) error) (attach.Attacher, error) {
	return attach.New(kind, attach.Options{StateDir: stateDir, Wrapper: wrapper, Place: place})
}
