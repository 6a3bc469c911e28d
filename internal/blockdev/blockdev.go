// Package blockdev asks the kernel about block devices.
package blockdev

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Size returns the size in bytes the kernel gives the block device at path now
// (BLKGETSIZE64), which after a table swap or a resize is the new one.
func Size(path string) (uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	n, err := unix.IoctlGetUint64(int(f.Fd()), unix.BLKGETSIZE64)
	if err != nil {
		return 0, fmt.Errorf("size of %s (BLKGETSIZE64): %w", path, err)
	}
	return n, nil
}
