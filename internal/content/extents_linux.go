//go:build linux

package content

import (
	"errors"
	"os"
	"syscall"
)

// Linux lseek whence values for sparse files.
const (
	seekData = 3
	seekHole = 4
)

// dataExtents calls yield for each [start, end) range that may hold data,
// skipping holes; where the file system cannot say, the whole file is one range.
func dataExtents(f *os.File, size int64, yield func(start, end int64) error) error {
	off := int64(0)
	for off < size {
		data, err := f.Seek(off, seekData)
		if errors.Is(err, syscall.ENXIO) {
			return nil // only a hole remains
		}
		if errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.EOPNOTSUPP) {
			return yield(off, size)
		}
		if err != nil {
			return err
		}
		if data >= size {
			return nil
		}
		hole, err := f.Seek(data, seekHole)
		if err != nil {
			return err
		}
		hole = min(hole, size)
		if hole <= data {
			return yield(data, size) // defensive: never loop
		}
		if err := yield(data, hole); err != nil {
			return err
		}
		off = hole
	}
	return nil
}
