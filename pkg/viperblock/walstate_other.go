//go:build !linux

package viperblock

import (
	"os"
	"time"
)

// fileSizeBirth returns a file's size and modification time.
func fileSizeBirth(path string) (int64, time.Time, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, time.Time{}, err
	}
	return fi.Size(), fi.ModTime(), nil
}
