//go:build !linux

package attach

import "fmt"

func newAttacher(kind string, o Options) (Attacher, error) {
	return nil, fmt.Errorf("%w: block devices need Linux", ErrUnsupported)
}
