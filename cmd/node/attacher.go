package main

import (
	"github.com/viperblock/viperblock-csi/pkg/attach"
)

// newAttacher builds the attacher chosen by --attacher.
func newAttacher(kind, stateDir string, wrapper []string) (attach.Attacher, error) {
	return attach.New(kind, attach.Options{StateDir: stateDir, Wrapper: wrapper})
}
